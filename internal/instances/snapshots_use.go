package instances

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hypeman-vm/hypeman/internal/cuid"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// snapshotTarget resolves a target state for a snapshot of kind: Standby
// snapshots default to Running and allow all three; Stopped snapshots
// default to Stopped and allow Stopped and Running.
func snapshotTarget(kind string, t State) (State, error) {
	if t == "" {
		if kind == KindStandby {
			return StateRunning, nil
		}
		return StateStopped, nil
	}
	switch {
	case t == StateRunning || t == StateStopped:
	case t == StateStandby && kind == KindStandby:
	default:
		return "", errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request", "invalid target_state %q for snapshot kind %s", t, kind)
	}
	return t, nil
}

// ForkSnapshot makes a new instance from a stored snapshot.
func (m *Manager) ForkSnapshot(ctx context.Context, sid string, req ForkRequest) (Instance, error) {
	start := time.Now()
	if !ValidName(req.Name) {
		return Instance{}, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request", "invalid fork name %q", req.Name)
	}
	snap, err := m.GetSnapshot(ctx, sid)
	if err != nil {
		return Instance{}, err
	}
	target, err := snapshotTarget(snap.Kind, req.TargetState)
	if err != nil {
		return Instance{}, err
	}
	release, err := m.reserveName(ctx, req.Name)
	if err != nil {
		return Instance{}, err
	}
	defer release()
	meta := snap.Source.clone()
	meta.ID, meta.Name, meta.CreatedAt = cuid.New(), req.Name, time.Now().UTC()
	unlock := m.lock(meta.ID)
	defer unlock()
	err = m.instanceFromSnapshot(ctx, meta, snap, target, true)
	m.opLog(meta.ID, "create-from-snapshot", start, err, fmt.Sprintf("snapshot %s of %s", snap.ID, snap.SourceName))
	if err != nil {
		return Instance{}, err
	}
	m.notify()
	return m.view(meta), nil
}

// RestoreSnapshot puts an instance back to one of its own snapshots, in
// place: its disk (and RAM, for a Standby snapshot) become the snapshot's,
// then it is brought to the target state. It keeps its ID and name.
func (m *Manager) RestoreSnapshot(ctx context.Context, ref, sid string, target State) (Instance, error) {
	start := time.Now()
	snap, err := m.GetSnapshot(ctx, sid)
	if err != nil {
		return Instance{}, errdefs.Newf(errdefs.ErrNotFound, "not_found", "instance or snapshot not found")
	}
	meta, inst, unlock, err := m.loadForOp(ctx, ref)
	if err != nil {
		return Instance{}, err
	}
	defer unlock()
	if snap.SourceID != meta.ID {
		return Instance{}, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request", "snapshot %s belongs to instance %s", snap.ID, snap.SourceID)
	}
	if inst.State == StateRunning || inst.State == StateInitializing {
		return Instance{}, errdefs.Newf(errdefs.ErrConflict, "invalid_state", "invalid state transition: cannot restore snapshot while source is %s", inst.State)
	}
	if target, err = snapshotTarget(snap.Kind, target); err != nil {
		return Instance{}, err
	}
	// Drop what the instance has now: a standby snapshot and its own RAM.
	if err := m.stopVM(ctx, meta, 0); err != nil {
		return Instance{}, err
	}
	_ = os.RemoveAll(m.paths.InstanceStandbyDir(meta.ID))
	_ = os.Remove(m.paths.InstanceMemory(meta.ID))
	old := m.overlayPath(meta)
	err = m.instanceFromSnapshot(ctx, meta, snap, target, false)
	if err == nil {
		_ = os.Remove(old)
		m.collectGarbage()
	}
	m.opLog(meta.ID, "restore-snapshot", start, err, "snapshot "+snap.ID)
	if err != nil {
		return Instance{}, err
	}
	m.notify()
	return m.view(meta), nil
}

// instanceFromSnapshot gives meta the snapshot's disk and memory and
// brings it to target. For a new instance (fresh), a failure removes it.
func (m *Manager) instanceFromSnapshot(ctx context.Context, meta *Metadata, snap *Snapshot, target State, fresh bool) error {
	meta.StartedAt, meta.StoppedAt, meta.ExitCode, meta.ExitMessage = nil, nil, nil, ""
	meta.ProgramStartedAt, meta.AgentReadyAt, meta.Pending, meta.Freeze = nil, nil, "", nil
	meta.Clones = nil
	meta.Network = NetworkMeta{Enabled: meta.Network.Enabled}
	meta.Layers = append([]string(nil), snap.Layers...)
	meta.Overlay = nextOverlayName(meta.Overlay)
	if fresh {
		meta.Overlay, meta.VMMGen = "overlay-0.qcow2", 0
	}
	meta.MemoryBase = ""
	resume := snap.Kind == KindStandby && target != StateStopped
	meta.Inherited, meta.InheritedMAC = false, ""
	if resume {
		meta.MemoryBase = snap.MemoryBase
		if !fresh && m.reclaimSnapshotNetwork(ctx, meta, snap) {
			// Rolled back to its own snapshot with the address and MAC it
			// had then: the guest's memory holds exactly that identity.
		} else {
			meta.Inherited, meta.InheritedMAC = true, snap.Source.Network.MAC
			if snap.Source.Inherited {
				meta.InheritedMAC = snap.Source.InheritedMAC
			}
		}
	}
	undo := func() {
		if fresh {
			_ = m.deleteLocked(context.WithoutCancel(ctx), meta.ID, false)
		}
	}
	if err := m.writeFromSnapshot(ctx, meta, snap, resume, fresh); err != nil {
		undo()
		return err
	}
	var err error
	switch {
	case resume && target == StateRunning:
		err = m.resume(ctx, meta)
	case target == StateRunning:
		err = m.bootFromDisk(ctx, meta)
	}
	if err == nil && meta.Creating {
		meta.Creating = false // visible only now: a crash before removes it
		err = saveMetadata(m.paths.InstanceMetadata(meta.ID), meta)
	}
	if err != nil {
		undo()
	}
	return err
}

// reclaimSnapshotNetwork gives an instance rolled back in place to one of
// its own Standby snapshots the address and MAC it had when the snapshot
// was taken, if they are free. It reports whether it did; if not (taken
// meanwhile, or the snapshot's guest still carried another instance's
// identity), the instance gets a new address like a fork.
func (m *Manager) reclaimSnapshotNetwork(ctx context.Context, meta *Metadata, snap *Snapshot) bool {
	n := snap.Source.Network
	if !meta.Network.Enabled || !n.Enabled || n.IP == "" || snap.SourceID != meta.ID || snap.Source.Inherited {
		return false
	}
	n.TAP = tapNameFor(meta.ID)
	a, err := allocationOf(n)
	if err != nil {
		return false
	}
	if err := m.net.Reserve(ctx, meta.ID, a); err != nil {
		m.log.Info("snapshot's address is taken: the instance gets a new one", "id", meta.ID, "ip", n.IP, "err", err)
		return false
	}
	meta.Network = n
	return true
}

// writeFromSnapshot writes the instance dir: overlay on the snapshot's
// last layer, standby snapshot (linked state, manifest) when resuming.
func (m *Manager) writeFromSnapshot(ctx context.Context, meta *Metadata, snap *Snapshot, resume, fresh bool) error {
	id := meta.ID
	if fresh {
		meta.Creating = true
		if err := os.MkdirAll(m.paths.InstanceLogsDir(id), 0o755); err != nil {
			return err
		}
		if err := saveMetadata(m.paths.InstanceMetadata(id), meta); err != nil {
			return err
		}
	}
	if len(snap.Layers) == 0 {
		return fmt.Errorf("snapshot %s has no disk layers", snap.ID)
	}
	if err := m.storage.CreateOverlayOn(ctx, m.overlayPath(meta), m.paths.Layer(snap.Layers[len(snap.Layers)-1])); err != nil {
		return err
	}
	if err := m.writeConfigDisk(ctx, meta); err != nil {
		return err
	}
	if resume {
		sdir := m.paths.SnapshotDir(snap.ID)
		if err := verify("snapshot "+snap.ID, sdir, snap.Manifest); err != nil {
			return err
		}
		dir := m.paths.InstanceStandbyDir(id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.Link(statePath(sdir), statePath(dir)); err != nil {
			return err
		}
		if err := writeManifest(dir, manifest{Memory: snap.MemoryBase, MemoryBytes: snap.Manifest.MemoryBytes}); err != nil {
			return err
		}
	}
	return saveMetadata(m.paths.InstanceMetadata(id), meta)
}

// bootFromDisk boots an instance that has a disk but no memory state.
func (m *Manager) bootFromDisk(ctx context.Context, meta *Metadata) error {
	img, err := m.images.ByDigest(ctx, meta.ImageDigest)
	if err != nil {
		return err
	}
	return m.bootFresh(ctx, meta, img)
}
