package instances

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/hypeman-vm/hypeman/internal/guest/events"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
)

// watch follows a running VM until it exits: it notices when the program
// starts (Initializing -> Running) and, when the VM process ends by itself
// (the program exited and the guest powered off), records the exit and
// frees the VM's resources.
func (m *Manager) watch(id string, vm hypervisor.VM, boot int, started bool) {
	rv := &runningVM{vm: vm, boot: boot, started: started}
	m.mu.Lock()
	m.vms[id] = rv
	m.mu.Unlock()
	m.watchers.Add(1)
	go func() {
		defer m.watchers.Done()
		m.followBoot(id, rv)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-m.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		err := vm.Wait(ctx)
		cancel()
		if err != nil {
			return // daemon closing; the VM keeps running
		}
		m.onExit(id, rv)
	}()
}

// followBoot polls the events file until the boot is complete (the
// program started and, unless disabled, the agent answers a ping), or the
// VM ends. It records the boot markers in the metadata.
func (m *Manager) followBoot(id string, rv *runningVM) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-m.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	m.mu.Lock()
	started := rv.started
	m.mu.Unlock()
	for !started {
		if s := m.bootEvents(id); s.ProgramStarted && (s.AgentReady || m.skipsAgent(id)) {
			if m.skipsAgent(id) || m.pingAgent(ctx, id) == nil {
				m.mu.Lock()
				rv.started, started = true, true
				m.mu.Unlock()
				m.recordBoot(id, rv)
				m.notify()
				return
			}
		}
		if rv.vm.Exited() {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (m *Manager) pingAgent(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return m.agentFor(id, m.vmmGen(id)).Ping(ctx)
}

// vmmGen is the instance's current VMM generation.
func (m *Manager) vmmGen(id string) int {
	meta, err := loadMetadata(m.paths.InstanceMetadata(id))
	if err != nil {
		return 0
	}
	return meta.VMMGen
}

func (m *Manager) skipsAgent(id string) bool {
	meta, err := loadMetadata(m.paths.InstanceMetadata(id))
	return err == nil && meta.SkipGuestAgent
}

// bootEvents parses what the guest reported on its events port.
func (m *Manager) bootEvents(id string) events.Summary {
	s, _ := events.ParseFile(m.paths.InstanceEvents(id))
	return s
}

// bootComplete reports whether the guest reported a complete boot (used
// when adopting a VM after a daemon restart: its agent answered then).
func (m *Manager) bootComplete(meta *Metadata) bool {
	if meta.ProgramStartedAt != nil && (meta.AgentReadyAt != nil || meta.SkipGuestAgent) {
		return true // recorded for this boot (every new boot clears them)
	}
	s := m.bootEvents(meta.ID)
	return s.ProgramStarted && (s.AgentReady || meta.SkipGuestAgent)
}

// recordBoot saves the boot markers of rv's boot in the metadata.
func (m *Manager) recordBoot(id string, rv *runningVM) {
	unlock := m.lock(id)
	defer unlock()
	m.mu.Lock()
	current := m.vms[id] == rv
	m.mu.Unlock()
	meta, err := loadMetadata(m.paths.InstanceMetadata(id))
	if !current || err != nil || meta.Boot != rv.boot || meta.Creating {
		return
	}
	now := time.Now().UTC()
	meta.ProgramStartedAt = &now
	if !meta.SkipGuestAgent {
		meta.AgentReadyAt = &now
	}
	if err := saveMetadata(m.paths.InstanceMetadata(id), meta); err != nil {
		m.log.Warn("record boot markers", "id", id, "err", err)
	}
}

// onExit finalizes a VM that ended on its own.
func (m *Manager) onExit(id string, rv *runningVM) {
	unlock := m.lock(id)
	defer unlock()
	m.mu.Lock()
	current := m.vms[id] == rv
	m.mu.Unlock()
	if !current {
		return // an operation (stop, delete) already finalized this boot
	}
	meta, err := loadMetadata(m.paths.InstanceMetadata(id))
	if err != nil || meta.Boot != rv.boot {
		m.forgetVM(id, rv)
		return
	}
	start := time.Now()
	err = m.finalizeStopped(context.Background(), meta, rv, false)
	m.opLog(id, "exit", start, err, exitDetail(meta))
}

func exitDetail(meta *Metadata) string {
	if meta.ExitMessage == "" {
		return ""
	}
	return "(" + meta.ExitMessage + ")"
}

func (m *Manager) forgetVM(id string, rv *runningVM) {
	m.mu.Lock()
	if m.vms[id] == rv {
		delete(m.vms, id)
	}
	m.mu.Unlock()
	m.notify()
}

// finalizeStopped records how the program ended, frees the network and
// the VM's runtime files, and saves the metadata. The VM process must be
// gone. The caller holds the instance lock.
func (m *Manager) finalizeStopped(ctx context.Context, meta *Metadata, rv *runningVM, killed bool) error {
	id := meta.ID
	now := time.Now().UTC()
	meta.StoppedAt = &now
	meta.ExitCode, meta.ExitMessage = nil, ""
	if s, err := events.ParseFile(m.paths.InstanceEvents(id)); err == nil && s.Exit != nil {
		meta.ExitCode = s.Exit.ExitCode
		meta.ExitMessage = s.Exit.Message
	} else if killed {
		code := 137
		meta.ExitCode = &code
		meta.ExitMessage = "killed by signal 9 (SIGKILL): the VM was stopped forcibly"
	} else {
		meta.ExitMessage = "the VM ended without reporting the program's exit status"
	}
	var errs []error
	if err := m.releaseNetwork(ctx, meta); err != nil {
		errs = append(errs, err)
	}
	for _, p := range []string{m.paths.InstancePIDFile(id, meta.VMMGen), m.paths.InstanceQMPSocket(id, meta.VMMGen),
		m.paths.InstanceAgentSocket(id, meta.VMMGen), m.paths.InstanceBulkSocket(id, meta.VMMGen), m.paths.InstanceMemory(id)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := saveMetadata(m.paths.InstanceMetadata(id), meta); err != nil {
		errs = append(errs, err)
	}
	m.dropAgent(id)
	if rv != nil {
		m.forgetVM(id, rv)
	} else {
		m.notify()
	}
	return errors.Join(errs...)
}

// releaseNetwork deletes the TAP and frees the address of meta, and clears
// them from the metadata.
func (m *Manager) releaseNetwork(ctx context.Context, meta *Metadata) error {
	n := meta.Network
	if !n.Enabled || n.TAP == "" {
		return nil
	}
	a, err := allocationOf(n)
	if err != nil {
		return err
	}
	if err := m.net.Release(ctx, meta.ID, a); err != nil {
		return err
	}
	meta.Network = NetworkMeta{Enabled: true}
	return nil
}
