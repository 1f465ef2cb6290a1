package instances

import (
	"context"
	"errors"
	"fmt"
	"os"
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

// attach finds the VM of meta if it still runs.
func (m *Manager) attach(ctx context.Context, meta *Metadata) hypervisor.VM {
	hv, ok := m.hvs[hypervisor.Type(meta.Hypervisor)]
	if !ok {
		return nil
	}
	vm, err := hv.Attach(ctx, hypervisor.Spec{
		ControlSocket: m.paths.InstanceQMPSocket(meta.ID, meta.VMMGen),
		PIDFile:       m.paths.InstancePIDFile(meta.ID, meta.VMMGen),
	})
	if err != nil {
		return nil
	}
	return vm
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
