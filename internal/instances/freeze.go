package instances

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/hypeman-vm/hypeman/internal/cuid"
	"github.com/hypeman-vm/hypeman/internal/storage"
)

// Freezing shares an instance's disk and memory with forks and snapshots
// without copying them (storage.Freeze). Both steps first record what they
// are about to do in the metadata (Pending "freeze" and a plan), so that a
// daemon killed in the middle can finish or undo them (settleFreeze).

// freezePlan names the files a freeze makes. It is stored in the metadata
// while the freeze runs.
type freezePlan struct {
	Layer      string `json:"layer,omitempty"`       // new layer ID
	NewOverlay string `json:"new_overlay,omitempty"` // the instance's next overlay name
	Memory     string `json:"memory,omitempty"`      // new memory base ID
	// Clone marks a freeze by cloning (clone.go): the instance keeps its
	// files, and the plan only protects the clones from garbage
	// collection until their consumer refers to them.
	Clone bool `json:"clone,omitempty"`
}

// nextOverlayName returns overlay-<n+1>.qcow2 after the current name.
func nextOverlayName(cur string) string {
	var n int
	if _, err := fmt.Sscanf(cur, "overlay-%d.qcow2", &n); err != nil {
		n = 0
	}
	return fmt.Sprintf("overlay-%d.qcow2", n+1)
}

// planFreeze decides the names of a freeze of meta's disk and, with
// memory, of its RAM file (only when it is the instance's own).
func planFreeze(meta *Metadata, memory bool) freezePlan {
	p := freezePlan{Layer: cuid.New(), NewOverlay: nextOverlayName(meta.Overlay)}
	if memory && meta.MemoryBase == "" {
		p.Memory = cuid.New()
	}
	return p
}

// freeze carries out plan on meta (whose VM, if any, is paused or gone):
// the overlay becomes layer plan.Layer and the instance gets a new empty
// overlay on it; its own RAM file becomes memory base plan.Memory. It
// updates meta and its standby manifest, and saves them.
func (m *Manager) freeze(ctx context.Context, meta *Metadata, plan freezePlan) error {
	meta.Pending, meta.Freeze = "freeze", &plan
	if err := saveMetadata(m.paths.InstanceMetadata(meta.ID), meta); err != nil {
		return err
	}
	if err := m.applyFreeze(ctx, meta, plan); err != nil {
		return err
	}
	meta.Pending, meta.Freeze = "", nil
	return saveMetadata(m.paths.InstanceMetadata(meta.ID), meta)
}

// applyFreeze does (or finishes) the file moves of plan and updates meta.
// Each step checks whether it already happened, so it can be re-run after
// a crash.
func (m *Manager) applyFreeze(ctx context.Context, meta *Metadata, plan freezePlan) error {
	layer := m.paths.Layer(plan.Layer)
	if cur := m.overlayPath(meta); fileExists(cur) && !fileExists(layer) {
		if err := storage.Freeze(cur, layer); err != nil {
			return err
		}
	}
	next := m.paths.InstanceOverlay(meta.ID, plan.NewOverlay)
	if !fileExists(next) {
		if err := m.storage.CreateOverlayOn(ctx, next+".tmp", layer); err != nil {
			return err
		}
		if err := os.Rename(next+".tmp", next); err != nil {
			return err
		}
	}
	if meta.Overlay != plan.NewOverlay {
		meta.Overlay = plan.NewOverlay
		meta.Layers = append(meta.Layers, plan.Layer)
	}
	if plan.Memory == "" {
		return nil
	}
	base := m.paths.MemoryBase(plan.Memory)
	if own := m.paths.InstanceMemory(meta.ID); fileExists(own) && !fileExists(base) {
		if err := storage.Freeze(own, base); err != nil {
			return err
		}
	}
	meta.MemoryBase = base
	return m.repointStandby(meta)
}

// repointStandby rewrites the standby manifest after the RAM file moved.
func (m *Manager) repointStandby(meta *Metadata) error {
	dir := m.paths.InstanceStandbyDir(meta.ID)
	man, err := readManifest(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if man.Memory == meta.MemoryBase {
		return nil
	}
	man.Memory, man.MemoryShared = meta.MemoryBase, false
	return writeManifest(dir, man)
}

// settleFreeze finishes a freeze a crash interrupted. Whether the moves
// happened is read from the files, so it is safe whatever step was last.
func (m *Manager) settleFreeze(ctx context.Context, meta *Metadata) error {
	if meta.Freeze == nil {
		meta.Pending = ""
		return saveMetadata(m.paths.InstanceMetadata(meta.ID), meta)
	}
	plan := *meta.Freeze
	if plan.Clone {
		// The instance kept its files: drop the plan; clones that no
		// consumer names go with the next garbage collection.
		meta.Pending, meta.Freeze = "", nil
		return saveMetadata(m.paths.InstanceMetadata(meta.ID), meta)
	}
	if fileExists(m.overlayPath(meta)) && !fileExists(m.paths.Layer(plan.Layer)) {
		// Nothing was moved: drop the plan.
		_ = os.Remove(m.paths.InstanceOverlay(meta.ID, plan.NewOverlay) + ".tmp")
		meta.Pending, meta.Freeze = "", nil
		return saveMetadata(m.paths.InstanceMetadata(meta.ID), meta)
	}
	return m.freeze(ctx, meta, plan)
}

// layerID returns the ID of a layer path.
func layerID(path string) string {
	return strings.TrimSuffix(path[strings.LastIndexByte(path, '/')+1:], ".qcow2")
}
