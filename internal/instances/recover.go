package instances

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hypeman-vm/hypeman/internal/hypervisor"
)

// Recover rebuilds the manager's view after a daemon start: it adopts VMs
// that kept running, finalizes those that ended while no daemon watched,
// and rolls back creates that a crash interrupted. It returns the TAP
// devices in use, so the caller can remove orphans.
func (m *Manager) Recover(ctx context.Context) (keepTAPs map[string]bool, err error) {
	ents, err := os.ReadDir(m.paths.InstancesDir())
	if err != nil {
		return nil, fmt.Errorf("instances: recover: %w", err)
	}
	keepTAPs = map[string]bool{}
	for _, e := range ents {
		id := e.Name()
		tap, err := m.recoverOne(ctx, id)
		if err != nil {
			m.log.Warn("recover instance", "id", id, "err", err)
		}
		if tap != "" {
			keepTAPs[tap] = true
		}
	}
	m.collectGarbage() // frozen files of forks and freezes a crash undid
	return keepTAPs, nil
}

func (m *Manager) recoverOne(ctx context.Context, id string) (tap string, err error) {
	unlock := m.lock(id)
	defer unlock()
	meta, err := loadMetadata(m.paths.InstanceMetadata(id))
	if errors.Is(err, os.ErrNotExist) {
		// A create killed before its first metadata write.
		return "", os.RemoveAll(m.paths.InstanceDir(id))
	}
	if err != nil {
		return "", err // left visible as Unknown
	}
	vm := m.attach(ctx, meta)
	if meta.Creating {
		return "", m.rollbackCreate(ctx, meta, vm)
	}
	if meta.Pending != "" {
		if vm, err = m.settlePending(ctx, meta, vm); err != nil {
			m.log.Warn("settle interrupted operation", "id", id, "op", meta.Pending, "err", err)
		}
	}
	// State files of VMM switches that a crash left behind (forks that
	// used them are gone too: they were still being created).
	if stale, _ := filepath.Glob(filepath.Join(m.paths.InstanceDir(id), "switch-*")); len(stale) > 0 {
		for _, d := range stale {
			_ = os.RemoveAll(d)
		}
	}
	if vm == nil && hasManifest(m.paths.InstanceStandbyDir(id)) {
		// Standby keeps its address and MAC for the restore.
		if err := m.reserveNetwork(ctx, meta); err != nil {
			m.log.Warn("re-reserve network of standby instance", "id", id, "err", err)
		}
		return "", nil
	}
	if vm != nil {
		if err := m.reserveNetwork(ctx, meta); err != nil {
			m.log.Warn("re-reserve network", "id", id, "err", err)
		}
		m.watch(id, vm, meta.Boot, m.bootComplete(meta))
		return meta.Network.TAP, nil
	}
	if meta.StartedAt != nil && meta.StoppedAt == nil {
		// The VM ended while no daemon was watching. (QEMU removes its
		// pid file when it exits, so the metadata is what tells.)
		start := time.Now()
		err := m.finalizeStopped(ctx, meta, nil, false)
		m.opLog(id, "exit", start, err, exitDetail(meta)+" (found at daemon start)")
		return "", err
	}
	return "", nil
}

// attach finds the VM of meta's current VMM generation if it still runs.
func (m *Manager) attach(ctx context.Context, meta *Metadata) hypervisor.VM {
	return m.attachGen(ctx, meta, meta.VMMGen)
}

func (m *Manager) attachGen(ctx context.Context, meta *Metadata, gen int) hypervisor.VM {
	hv, ok := m.hvs[hypervisor.Type(meta.Hypervisor)]
	if !ok {
		return nil
	}
	// The whole spec, not just the pid file and socket: later operations
	// (a state save) depend on how the VM was started.
	img, _ := m.images.ByDigest(ctx, meta.ImageDigest)
	g := *meta
	g.VMMGen = gen
	vm, err := hv.Attach(ctx, m.vmSpec(&g, img))
	if err != nil {
		return nil
	}
	return vm
}

// settlePending finishes or undoes an operation a crash interrupted, so
// that the instance is in its old state or its new one. It returns the VM
// that runs afterwards, if any.
func (m *Manager) settlePending(ctx context.Context, meta *Metadata, vm hypervisor.VM) (hypervisor.VM, error) {
	op := meta.Pending
	m.log.Info("settling interrupted operation", "id", meta.ID, "op", op)
	switch op {
	case "standby":
		if hasManifest(m.paths.InstanceStandbyDir(meta.ID)) {
			m.finishStandby(ctx, meta, runningOf(vm), true)
			return nil, nil
		}
		_ = os.RemoveAll(m.paths.InstanceStandbyDir(meta.ID))
		resumeIfPaused(ctx, vm)
	case "restore":
		if vm != nil {
			_ = os.RemoveAll(m.paths.InstanceStandbyDir(meta.ID))
			resumeIfPaused(ctx, vm)
		} else if meta.Network.TAP != "" {
			_ = m.net.DetachTAP(ctx, meta.Network.TAP)
		}
	case "freeze":
		resumeIfPaused(ctx, vm)
		return vm, m.settleFreeze(ctx, meta)
	case "switch":
		return m.settleSwitch(ctx, meta, vm)
	}
	meta.Pending, meta.Freeze = "", nil
	return vm, saveMetadata(m.paths.InstanceMetadata(meta.ID), meta)
}

func runningOf(vm hypervisor.VM) *runningVM {
	if vm == nil {
		return nil
	}
	return &runningVM{vm: vm}
}

func resumeIfPaused(ctx context.Context, vm hypervisor.VM) {
	if s, ok := vm.(hypervisor.Snapshotter); ok && vm != nil {
		if st, err := vm.Status(ctx); err == nil && st == hypervisor.StatusPaused {
			_ = s.Resume(ctx)
		}
	}
}

// settleSwitch settles an interrupted freezeRunning: if the new VMM runs,
// the switch happened and is committed; otherwise the old VM keeps (or
// regains) its files and resumes.
func (m *Manager) settleSwitch(ctx context.Context, meta *Metadata, old hypervisor.VM) (hypervisor.VM, error) {
	plan := meta.Freeze
	if plan == nil {
		meta.Pending = ""
		return old, saveMetadata(m.paths.InstanceMetadata(meta.ID), meta)
	}
	next := m.attachGen(ctx, meta, meta.VMMGen+1)
	if next != nil {
		if st, err := next.Status(ctx); err != nil || st != hypervisor.StatusRunning {
			_ = next.Kill()
			_ = next.Wait(ctx)
			next = nil
		}
	}
	if next != nil {
		if old != nil {
			_ = old.Kill()
			_ = old.Wait(ctx)
		}
		cur := meta.Network.TAP
		(&switchOp{m: m, cur: meta.clone(), plan: *plan}).dropOwnNames() // the old VM is gone
		meta.Overlay = plan.NewOverlay
		meta.Layers = append(meta.Layers, plan.Layer)
		if plan.Memory != "" {
			meta.MemoryBase = m.paths.MemoryBase(plan.Memory)
		}
		meta.VMMGen++
		if cur != "" {
			alt := m.net.AltTAPName(meta.ID)
			if cur == alt {
				alt = tapNameFor(meta.ID)
			}
			meta.Network.TAP = alt
			_ = m.net.DetachTAP(ctx, cur)
		}
		meta.Pending, meta.Freeze = "", nil
		return next, saveMetadata(m.paths.InstanceMetadata(meta.ID), meta)
	}
	sw := &switchOp{m: m, cur: meta, plan: *plan}
	sw.thawFiles(ctx)
	if t := m.net.AltTAPName(meta.ID); t != meta.Network.TAP {
		_ = m.net.DetachTAP(ctx, t)
	} else {
		_ = m.net.DetachTAP(ctx, tapNameFor(meta.ID))
	}
	resumeIfPaused(ctx, old)
	meta.Pending, meta.Freeze = "", nil
	return old, saveMetadata(m.paths.InstanceMetadata(meta.ID), meta)
}

func (m *Manager) rollbackCreate(ctx context.Context, meta *Metadata, vm hypervisor.VM) error {
	if vm != nil {
		_ = vm.Kill()
		_ = vm.Wait(ctx)
	}
	if err := m.releaseNetwork(ctx, meta); err != nil {
		m.log.Warn("release network of interrupted create", "id", meta.ID, "err", err)
	}
	m.log.Info("rolled back interrupted create", "id", meta.ID, "name", meta.Name)
	return os.RemoveAll(m.paths.InstanceDir(meta.ID))
}

func (m *Manager) reserveNetwork(ctx context.Context, meta *Metadata) error {
	if !meta.Network.Enabled || meta.Network.TAP == "" {
		return nil
	}
	a, err := allocationOf(meta.Network)
	if err != nil {
		return err
	}
	return m.net.Reserve(ctx, meta.ID, a)
}
