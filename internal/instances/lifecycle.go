package instances

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
)

// StartRequest optionally overrides the entrypoint and cmd for this and
// later runs (nil keeps the previous value).
type StartRequest struct {
	Entrypoint []string
	Cmd        []string
}

// loadForOp resolves ref, takes the instance lock and loads its metadata
// and current state. The caller must call the returned unlock.
func (m *Manager) loadForOp(ctx context.Context, ref string) (*Metadata, Instance, func(), error) {
	id, err := m.Resolve(ctx, ref)
	if err != nil {
		return nil, Instance{}, nil, err
	}
	unlock := m.lock(id)
	meta, err := loadMetadata(m.paths.InstanceMetadata(id))
	if errors.Is(err, os.ErrNotExist) {
		unlock()
		return nil, Instance{}, nil, errdefs.Newf(errdefs.ErrNotFound, "not_found", "instance %s not found", ref)
	}
	if err != nil {
		unlock()
		return nil, Instance{}, nil, fmt.Errorf("%w: %v", errdefs.ErrInternal, err)
	}
	return meta, m.view(meta), unlock, nil
}

// Start boots a Stopped instance with a fresh network identity. The
// overlay disk, and so everything the program wrote, is kept.
func (m *Manager) Start(ctx context.Context, ref string, req StartRequest) (Instance, error) {
	start := time.Now()
	meta, inst, unlock, err := m.loadForOp(ctx, ref)
	if err != nil {
		return Instance{}, err
	}
	defer unlock()
	if err := checkTransition(opStart, inst.State); err != nil {
		return Instance{}, err
	}
	img, err := m.images.ByDigest(ctx, meta.ImageDigest)
	if err != nil {
		return Instance{}, errdefs.Newf(errdefs.ErrNotFound, "not_found", "instance image not found: %v", errdefs.Message(err))
	}
	if req.Entrypoint != nil {
		meta.Entrypoint = req.Entrypoint
	}
	if req.Cmd != nil {
		meta.Cmd = req.Cmd
	}
	err = m.bootFresh(ctx, meta, img)
	m.opLog(meta.ID, "start", start, err, "")
	if err != nil {
		return Instance{}, err
	}
	m.notify()
	return m.view(meta), nil
}

// bootFresh boots a stopped instance: a fresh network identity, a new
// config disk, a new VM. On failure the instance is left Stopped.
func (m *Manager) bootFresh(ctx context.Context, meta *Metadata, img Image) error {
	err := m.runSteps(ctx, "start", []step{
		{name: "allocate-network", do: func(ctx context.Context) error { return m.allocateNetwork(ctx, meta) },
			undo: func(ctx context.Context) { _ = m.releaseNetwork(ctx, meta) }},
		{name: "prepare-boot", do: func(ctx context.Context) error { meta.Boot++; return m.prepareBoot(meta, img) }},
		{name: "boot-vm", do: func(ctx context.Context) error { return m.startVM(ctx, meta, img) },
			undo: func(ctx context.Context) { m.killVM(ctx, meta.ID) }},
	})
	if err != nil {
		m.restoreStoppedMeta(meta)
	}
	return err
}

// waitBooted waits until the instance's boot is complete (Running).
func (m *Manager) waitBooted(ctx context.Context, id string) error {
	for {
		changed := m.changes()
		rv := m.currentVM(id)
		if rv == nil || rv.vm.Exited() {
			return fmt.Errorf("instance %s stopped while booting", id)
		}
		m.mu.Lock()
		started := rv.started
		m.mu.Unlock()
		if started {
			return nil
		}
		select {
		case <-changed:
		case <-time.After(time.Second):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// restoreStoppedMeta saves meta as a stopped instance after a failed start.
func (m *Manager) restoreStoppedMeta(meta *Metadata) {
	now := time.Now().UTC()
	meta.StoppedAt = &now
	meta.Network = NetworkMeta{Enabled: meta.Network.Enabled}
	_ = saveMetadata(m.paths.InstanceMetadata(meta.ID), meta)
}

// Stop stops a Running or Initializing instance gracefully: the guest init
// sends the program SIGTERM, then SIGKILL after the stop timeout, and
// powers off. If the VM is still there after that, it is killed.
func (m *Manager) Stop(ctx context.Context, ref string) (Instance, error) {
	start := time.Now()
	meta, inst, unlock, err := m.loadForOp(ctx, ref)
	if err != nil {
		return Instance{}, err
	}
	defer unlock()
	if err := checkTransition(opStop, inst.State); err != nil {
		return Instance{}, err
	}
	err = m.stopVM(ctx, meta, m.cfg.StopTimeout+3*time.Second)
	m.opLog(meta.ID, "stop", start, err, exitDetail(meta))
	if err != nil {
		return Instance{}, err
	}
	return m.view(meta), nil
}

// stopVM stops the VM of meta (graceful within timeout, else killed) and
// finalizes it as stopped. The caller holds the instance lock.
func (m *Manager) stopVM(ctx context.Context, meta *Metadata, timeout time.Duration) error {
	m.mu.Lock()
	rv := m.vms[meta.ID]
	m.mu.Unlock()
	killed := false
	if rv != nil {
		var err error
		request := func(ctx context.Context) error { return m.requestShutdown(ctx, meta, rv) }
		if killed, err = hypervisor.Stop(ctx, rv.vm, timeout, request); err != nil {
			return fmt.Errorf("stop VM: %w", err)
		}
	}
	return m.finalizeStopped(ctx, meta, rv, killed)
}

// requestShutdown asks the guest to stop its program: through the agent
// when it has one, else (or if the agent does not answer in time) with
// Ctrl-Alt-Del, which init also turns into a graceful stop.
func (m *Manager) requestShutdown(ctx context.Context, meta *Metadata, rv *runningVM) error {
	if !meta.SkipGuestAgent {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		err := m.agentFor(meta.ID, meta.VMMGen).Shutdown(actx)
		cancel()
		if err == nil {
			return nil
		}
		m.log.Debug("agent shutdown failed; sending Ctrl-Alt-Del", "id", meta.ID, "err", err)
	}
	return rv.vm.RequestShutdown(ctx)
}

// Delete removes an instance in any state: its VM (gracefully first unless
// graceful is false), its network allocation, and its data dir.
func (m *Manager) Delete(ctx context.Context, ref string, graceful bool) error {
	id, err := m.Resolve(ctx, ref)
	if err != nil {
		return err
	}
	unlock := m.lock(id)
	defer unlock()
	if err := m.deleteLocked(ctx, id, graceful); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.locks, id)
	m.mu.Unlock()
	return nil
}

// deleteLocked removes instance id; the caller holds its lock (or it is a
// fork being made, which nobody else can see).
func (m *Manager) deleteLocked(ctx context.Context, id string, graceful bool) error {
	meta, err := loadMetadata(m.paths.InstanceMetadata(id))
	if err == nil {
		timeout := time.Duration(0)
		if graceful {
			timeout = m.cfg.DeleteStopTimeout
		}
		if err := m.stopVM(ctx, meta, timeout); err != nil {
			return err
		}
	} else {
		m.killVM(ctx, id) // unreadable metadata: still end any VM we know
	}
	if err := os.RemoveAll(m.paths.InstanceDir(id)); err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	m.notify()
	m.collectGarbage()
	m.log.Info("instance deleted", "id", id)
	return nil
}

// LogPath returns the file of one log source of the instance: "app" (the
// guest console), "vmm" (QEMU's output) or "hypeman" (operations).
func (m *Manager) LogPath(ctx context.Context, ref, source string) (string, error) {
	id, err := m.Resolve(ctx, ref)
	if err != nil {
		return "", err
	}
	switch source {
	case "app", "":
		return m.paths.InstanceAppLog(id), nil
	case "vmm":
		return m.paths.InstanceVMMLog(id), nil
	case "hypeman":
		return m.paths.InstanceHypemanLog(id), nil
	}
	return "", errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request", "unknown log source %q", source)
}
