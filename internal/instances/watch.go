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

// followBoot polls the events file until the program starts or the VM ends.
func (m *Manager) followBoot(id string, rv *runningVM) {
	for !rv.started {
		if m.programStarted(id) {
			m.mu.Lock()
			rv.started = true
			m.mu.Unlock()
			m.notify()
			return
		}
		if rv.vm.Exited() {
			return
		}
		select {
		case <-m.stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// programStarted reports whether the guest reported program_start.
func (m *Manager) programStarted(id string) bool {
	s, err := events.ParseFile(m.paths.InstanceEvents(id))
	return err == nil && s.ProgramStarted
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
	for _, p := range []string{m.paths.InstancePIDFile(id), m.paths.InstanceQMPSocket(id), m.paths.InstanceMemory(id)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := saveMetadata(m.paths.InstanceMetadata(id), meta); err != nil {
		errs = append(errs, err)
	}
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
