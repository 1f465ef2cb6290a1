package instances

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/hypeman-vm/hypeman/internal/atomicfile"
	"github.com/hypeman-vm/hypeman/internal/cuid"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/storage"
)

// Snapshot kinds.
const (
	KindStandby = "Standby" // disk and memory
	KindStopped = "Stopped" // disk only
)

// Snapshot is a stored snapshot: frozen disk layers, and for the Standby
// kind a frozen memory base and the device state. It outlives its source.
type Snapshot struct {
	SchemaVersion    int               `json:"schema_version"`
	ID               string            `json:"id"`
	Name             string            `json:"name"`
	Kind             string            `json:"kind"`
	SourceID         string            `json:"source_instance_id"`
	SourceName       string            `json:"source_instance_name"`
	SourceHypervisor string            `json:"source_hypervisor"`
	CreatedAt        time.Time         `json:"created_at"`
	Tags             map[string]string `json:"tags,omitempty"`
	// Layers is the disk: the frozen layer chain, oldest first.
	Layers []string `json:"layers"`
	// MemoryBase is the frozen RAM file (Standby kind).
	MemoryBase string `json:"memory_base,omitempty"`
	// Manifest verifies the device state file (Standby kind).
	Manifest manifest `json:"manifest"`
	// Source is the source instance's metadata at snapshot time: what an
	// instance made from the snapshot is configured with.
	Source Metadata `json:"source"`
	// SizeBytes is the disk space of the payload (allocated blocks).
	SizeBytes int64 `json:"size_bytes"`
}

const snapshotVersion = 1

func snapshotRecord(dir string) string { return dir + "/snapshot.json" }

func loadSnapshot(dir string) (*Snapshot, error) {
	b, err := os.ReadFile(snapshotRecord(dir))
	if err != nil {
		return nil, err
	}
	var s Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", dir, err)
	}
	return &s, nil
}

// CreateSnapshotRequest asks for a stored snapshot of an instance.
type CreateSnapshotRequest struct {
	Kind string
	Name string
	Tags map[string]string
}

// CreateSnapshot stores a snapshot of an instance. Standby snapshots are
// taken from Running (frozen in place: the instance keeps running after a
// short pause) or Standby instances; Stopped snapshots from Stopped ones.
// Nothing is copied: the disk and RAM are frozen and shared.
func (m *Manager) CreateSnapshot(ctx context.Context, ref string, req CreateSnapshotRequest) (*Snapshot, error) {
	start := time.Now()
	if req.Name != "" && !ValidName(req.Name) {
		return nil, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request", "invalid snapshot name %q", req.Name)
	}
	src, inst, unlock, err := m.loadForOp(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := snapshotAllowed(req.Kind, inst.State); err != nil {
		return nil, err
	}
	if req.Name != "" {
		if taken, err := m.snapshotNameTaken(src.ID, req.Name); err != nil || taken {
			if err != nil {
				return nil, err
			}
			return nil, errdefs.Newf(errdefs.ErrConflict, "conflict", "instance %s already has a snapshot named %q", src.Name, req.Name)
		}
	}
	snap := &Snapshot{SchemaVersion: snapshotVersion, ID: cuid.New(), Name: req.Name, Kind: req.Kind,
		SourceID: src.ID, SourceName: src.Name, SourceHypervisor: src.Hypervisor, CreatedAt: time.Now().UTC(), Tags: req.Tags}
	fr, err := m.freezeForSnapshot(ctx, src, inst.State, req.Kind)
	if fr.cleanup != "" {
		defer os.RemoveAll(fr.cleanup)
	}
	if err == nil {
		err = m.writeSnapshot(snap, src, fr)
	}
	if fr.release != nil {
		fr.release()
	}
	m.opLog(src.ID, "snapshot", start, err, fmt.Sprintf("%s snapshot %s", req.Kind, snap.ID))
	if err != nil {
		return nil, err
	}
	return snap, nil
}

func snapshotAllowed(kind string, s State) error {
	switch {
	case kind == KindStandby && (s == StateRunning || s == StateStandby):
	case kind == KindStopped && s == StateStopped:
	case kind == KindStandby:
		return errdefs.Newf(errdefs.ErrConflict, "conflict", "invalid state transition: standby snapshot requires source in Running or Standby, got %s", s)
	case kind == KindStopped:
		return errdefs.Newf(errdefs.ErrConflict, "conflict", "invalid state transition: stopped snapshot requires source in Stopped, got %s", s)
	default:
		return errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request", "invalid snapshot kind %q: Standby or Stopped", kind)
	}
	return nil
}

// freezeForSnapshot freezes what the snapshot shares: disk only for a
// Stopped snapshot.
func (m *Manager) freezeForSnapshot(ctx context.Context, src *Metadata, s State, kind string) (frozenImage, error) {
	fr, err := m.freezeFor(ctx, src, s)
	if err == nil && kind == KindStopped {
		fr.memory, fr.state = "", ""
	}
	return fr, err
}

// writeSnapshot fills the snapshot's dir; the record, written last, makes
// it exist.
func (m *Manager) writeSnapshot(snap *Snapshot, src *Metadata, fr frozenImage) error {
	dir := m.paths.SnapshotDir(snap.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	snap.Layers = append([]string(nil), fr.layers...)
	snap.Source = *src.clone()
	snap.Source.Pending, snap.Source.Freeze, snap.Source.Clones = "", nil, nil
	snap.Source.Layers, snap.Source.MemoryBase = append([]string(nil), fr.layers...), fr.memory
	for _, l := range snap.Layers {
		if n, err := storage.AllocatedBytes(m.paths.Layer(l)); err == nil {
			snap.SizeBytes += n
		}
	}
	if snap.Kind == KindStandby {
		if err := os.Link(fr.state, statePath(dir)); err != nil {
			_ = os.RemoveAll(dir)
			return fmt.Errorf("link device state: %w", err)
		}
		snap.MemoryBase = fr.memory
		snap.Manifest = manifest{SchemaVersion: manifestVersion, Memory: fr.memory, MemoryBytes: src.MemoryBytes}
		sum, size, err := hashFile(statePath(dir))
		if err != nil {
			_ = os.RemoveAll(dir)
			return err
		}
		snap.Manifest.StateSHA256, snap.Manifest.StateSize = sum, size
		snap.SizeBytes += size
		if n, err := storage.AllocatedBytes(fr.memory); err == nil {
			snap.SizeBytes += n
		}
	}
	if err := atomicfile.WriteJSON(snapshotRecord(dir), snap); err != nil {
		_ = os.RemoveAll(dir)
		return err
	}
	return nil
}

func (m *Manager) snapshotNameTaken(sourceID, name string) (bool, error) {
	all, err := m.ListSnapshots(context.Background(), SnapshotFilter{SourceID: sourceID, Name: name})
	return len(all) > 0, err
}

// SnapshotFilter selects snapshots; zero fields match everything.
type SnapshotFilter struct {
	SourceID, Kind, Name string
	Tags                 map[string]string
}

// ListSnapshots returns the stored snapshots, oldest first.
func (m *Manager) ListSnapshots(ctx context.Context, f SnapshotFilter) ([]*Snapshot, error) {
	ents, err := os.ReadDir(m.paths.SnapshotsDir())
	if errors.Is(err, os.ErrNotExist) {
		return []*Snapshot{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []*Snapshot{}
	for _, e := range ents {
		s, err := loadSnapshot(m.paths.SnapshotDir(e.Name()))
		if err != nil {
			continue // incomplete: its record was never written
		}
		if (f.SourceID == "" || s.SourceID == f.SourceID) && (f.Kind == "" || s.Kind == f.Kind) &&
			(f.Name == "" || s.Name == f.Name) && matchTags(s.Tags, f.Tags) {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// GetSnapshot returns one snapshot by ID.
func (m *Manager) GetSnapshot(ctx context.Context, id string) (*Snapshot, error) {
	if id == "" || id != cleanID(id) {
		return nil, errdefs.Newf(errdefs.ErrNotFound, "not_found", "snapshot %s not found", id)
	}
	s, err := loadSnapshot(m.paths.SnapshotDir(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errdefs.Newf(errdefs.ErrNotFound, "not_found", "snapshot %s not found", id)
	}
	return s, err
}

func cleanID(id string) string {
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return ""
		}
	}
	return id
}

// DeleteSnapshot removes a snapshot; frozen files nobody else uses go too.
func (m *Manager) DeleteSnapshot(ctx context.Context, id string) error {
	if _, err := m.GetSnapshot(ctx, id); err != nil {
		return err
	}
	dir := m.paths.SnapshotDir(id)
	// The record goes first: a crash then leaves an incomplete dir, which
	// lists as nothing and is removed by the next delete or restart.
	if err := os.Remove(snapshotRecord(dir)); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	m.collectGarbage()
	return nil
}
