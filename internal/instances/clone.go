package instances

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/atomicfile"
	"github.com/hypeman-vm/hypeman/internal/cuid"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
	"github.com/hypeman-vm/hypeman/internal/storage"
)

// A fork or a snapshot needs its source's disk, and RAM and device state
// when it resumes from memory, as files that never change again. There are
// two ways to get them (docs/architecture.md, "Freezing"):
//
//   - by cloning (a data dir whose file system has reflinks): the overlay
//     and the RAM file are cloned (storage.Clone) into a new layer and a
//     new memory base; the source keeps its own files, so a running source
//     is paused only to save its device state and clone, and it keeps its
//     RAM file mapped shared (every later standby stays device state only);
//   - by moving (any other file system, freeze.go and switch.go): the files
//     themselves become the layer and the memory base, and the source gets
//     a new overlay on top and maps the frozen RAM privately.

// frozenImage is what a freeze hands to its consumer.
type frozenImage struct {
	layers  []string      // the disk: layer IDs, the top last
	memory  string        // the frozen RAM file, or ""
	state   string        // the device state file to link, or ""
	cleanup string        // a dir to remove once state is linked
	pause   time.Duration // how long a Running source was paused
	// release drops the source's hold on the clones (its freeze plan): to
	// call, with the source still locked, once the consumer's own records
	// name them. Nil for a freeze by moving.
	release func()
}

// freezeFor freezes src, now in state s, for a fork or a snapshot; memory
// says whether the consumer may resume from memory. The caller holds the
// source's lock.
func (m *Manager) freezeFor(ctx context.Context, src *Metadata, s State) (frozenImage, error) {
	switch {
	case s == StateRunning && m.clone && src.MemoryBase == "":
		return m.cloneRunning(ctx, src)
	case s == StateRunning:
		state, pause, err := m.freezeRunning(ctx, src)
		if err != nil {
			return frozenImage{}, err
		}
		return frozenImage{layers: src.Layers, memory: src.MemoryBase, state: state,
			cleanup: filepath.Dir(state), pause: pause}, nil
	}
	memory := s == StateStandby
	if m.clone {
		return m.cloneStill(ctx, src, memory)
	}
	if err := m.freeze(ctx, src, planFreeze(src, memory)); err != nil {
		return frozenImage{}, err
	}
	fr := frozenImage{layers: src.Layers}
	if memory {
		fr.memory, fr.state = src.MemoryBase, statePath(m.paths.InstanceStandbyDir(src.ID))
	}
	return fr, nil
}

// planClone names the clones of src's overlay and, with memory, of its own
// RAM file (a RAM file that is already a memory base is shared as it is).
func planClone(src *Metadata, memory bool) freezePlan {
	p := freezePlan{Layer: cuid.New(), Clone: true}
	if memory && src.MemoryBase == "" {
		p.Memory = cuid.New()
	}
	return p
}

// recordClone stores plan in src's metadata, which keeps the clones from
// garbage collection (gc.go) until release.
func (m *Manager) recordClone(src *Metadata, plan freezePlan) (frozenImage, error) {
	src.Pending, src.Freeze = "freeze", &plan
	if err := saveMetadata(m.paths.InstanceMetadata(src.ID), src); err != nil {
		return frozenImage{}, err
	}
	fr := frozenImage{layers: append(append([]string(nil), src.Layers...), plan.Layer), memory: src.MemoryBase}
	if plan.Memory != "" {
		fr.memory = m.paths.MemoryBase(plan.Memory)
	}
	fr.release = func() {
		if src.Freeze == nil {
			return
		}
		src.Pending, src.Freeze = "", nil
		if err := saveMetadata(m.paths.InstanceMetadata(src.ID), src); err != nil {
			m.log.Warn("drop freeze plan", "id", src.ID, "err", err)
		}
	}
	return fr, nil
}

// cloneFiles clones src's overlay and RAM file as plan names them.
func (m *Manager) cloneFiles(src *Metadata, plan freezePlan) error {
	if err := storage.Clone(m.overlayPath(src), m.paths.Layer(plan.Layer)); err != nil {
		return err
	}
	if plan.Memory != "" {
		return storage.Clone(m.paths.InstanceMemory(src.ID), m.paths.MemoryBase(plan.Memory))
	}
	return nil
}

// removeClones removes what cloneFiles made.
func (m *Manager) removeClones(plan freezePlan) {
	_ = os.Remove(m.paths.Layer(plan.Layer))
	if plan.Memory != "" {
		_ = os.Remove(m.paths.MemoryBase(plan.Memory))
	}
}

// cloneStill freezes a Stopped or Standby instance (no VM runs) by
// cloning, or reuses its last clones when its files have not changed
// since.
func (m *Manager) cloneStill(ctx context.Context, src *Metadata, memory bool) (frozenImage, error) {
	cache := m.validClones(src)
	plan := planClone(src, memory)
	if cache.Layer != "" {
		plan.Layer = ""
	}
	if cache.Memory != "" || !memory {
		plan.Memory = ""
	}
	if plan.Layer != "" || plan.Memory != "" {
		if _, err := m.recordClone(src, plan); err != nil {
			return frozenImage{}, err
		}
		if err := m.cloneFiles(src, plan); err != nil {
			m.removeClones(plan)
			src.Pending, src.Freeze = "", nil
			_ = saveMetadata(m.paths.InstanceMetadata(src.ID), src)
			return frozenImage{}, err
		}
		if plan.Layer != "" {
			cache.Layer, cache.Overlay = plan.Layer, fileStamp(m.overlayPath(src))
		}
		if plan.Memory != "" {
			cache.Memory, cache.RAM = plan.Memory, fileStamp(m.paths.InstanceMemory(src.ID))
		}
		// The cache now holds the clones for garbage collection.
		src.Clones, src.Pending, src.Freeze = &cache, "", nil
		if err := saveMetadata(m.paths.InstanceMetadata(src.ID), src); err != nil {
			return frozenImage{}, err
		}
	}
	fr := frozenImage{layers: append(append([]string(nil), src.Layers...), cache.Layer), memory: src.MemoryBase}
	if memory {
		if cache.Memory != "" {
			fr.memory = m.paths.MemoryBase(cache.Memory)
		}
		fr.state = statePath(m.paths.InstanceStandbyDir(src.ID))
	}
	return fr, nil
}

// cloneCache names an instance's last clones and what its files were
// like when they were made.
type cloneCache struct {
	Layer   string    `json:"layer,omitempty"`
	Overlay stampMeta `json:"overlay,omitempty"`
	Memory  string    `json:"memory,omitempty"`
	RAM     stampMeta `json:"ram,omitempty"`
}

// stampMeta identifies a version of a file: a write changes its
// modification time (QEMU writes the overlay; a guest's first write to a
// page of its mapped RAM file updates it too).
type stampMeta struct {
	Inode   uint64 `json:"inode,omitempty"`
	Size    int64  `json:"size,omitempty"`
	MTimeNs int64  `json:"mtime_ns,omitempty"`
}

func fileStamp(path string) stampMeta {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return stampMeta{}
	}
	return stampMeta{Inode: st.Ino, Size: st.Size, MTimeNs: st.Mtim.Nano()}
}

// validClones returns the parts of src's clone cache that still match its
// files and still exist.
func (m *Manager) validClones(src *Metadata) cloneCache {
	var c cloneCache
	if src.Clones == nil {
		return c
	}
	old := *src.Clones
	if old.Layer != "" && old.Overlay != (stampMeta{}) && old.Overlay == fileStamp(m.overlayPath(src)) && fileExists(m.paths.Layer(old.Layer)) {
		c.Layer, c.Overlay = old.Layer, old.Overlay
	}
	if old.Memory != "" && old.RAM != (stampMeta{}) && old.RAM == fileStamp(m.paths.InstanceMemory(src.ID)) && fileExists(m.paths.MemoryBase(old.Memory)) {
		c.Memory, c.RAM = old.Memory, old.RAM
	}
	return c
}

// cloneRunning freezes a Running instance whose RAM is its own shared file
// by cloning, and keeps it running: write back dirty pages (the guest
// runs), pause, save device state, clone overlay and RAM, resume. The
// pause lasts the state save and the clones of what the guest dirtied
// since the write-back.
func (m *Manager) cloneRunning(ctx context.Context, src *Metadata) (frozenImage, error) {
	rv := m.currentVM(src.ID)
	if rv == nil {
		return frozenImage{}, fmt.Errorf("no VM for %s", src.ID)
	}
	snap, ok := rv.vm.(hypervisor.Snapshotter)
	if !ok {
		return frozenImage{}, errdefs.Newf(errdefs.ErrNotImplemented, "not_supported", "hypervisor %s cannot take snapshots", src.Hypervisor)
	}
	plan := planClone(src, true)
	dir := filepath.Join(m.paths.InstanceDir(src.ID), "switch-"+cuid.New())
	var fr frozenImage
	var paused time.Time
	resume := func(ctx context.Context) error {
		err := snap.Resume(ctx)
		fr.pause = time.Since(paused)
		return err
	}
	err := m.runSteps(ctx, "clone-running", []step{
		{name: "record", do: func(context.Context) (err error) { fr, err = m.recordClone(src, plan); return err },
			undo: func(context.Context) { fr.release() }},
		{name: "write-back", do: func(context.Context) error { return m.writeBack(src) }},
		{name: "pause", do: func(ctx context.Context) error { paused = time.Now(); return snap.Pause(ctx) },
			undo: func(ctx context.Context) { _ = resume(ctx) }},
		{name: "save-state", do: func(ctx context.Context) error { return saveStateUnsynced(ctx, snap, dir) },
			undo: func(context.Context) { _ = os.RemoveAll(dir) }},
		{name: "clone", do: func(context.Context) error { return m.cloneFiles(src, plan) },
			undo: func(context.Context) { m.removeClones(plan) }},
		{name: "resume", do: resume},
		{name: "sync-state", do: func(context.Context) error { return syncState(dir) }},
	})
	if err != nil {
		return frozenImage{}, err
	}
	fr.state, fr.cleanup = statePath(dir), dir
	return fr, nil
}

// writeBack writes the dirty pages of meta's RAM file and overlay to disk,
// so that the clones under the pause have little left to write.
func (m *Manager) writeBack(meta *Metadata) error {
	if err := storage.SyncData(m.paths.InstanceMemory(meta.ID)); err != nil {
		return err
	}
	return storage.SyncData(m.overlayPath(meta))
}

// saveStateUnsynced saves the device state into a fresh dir, leaving the
// fsync for after the resume when the hypervisor allows it.
func saveStateUnsynced(ctx context.Context, snap hypervisor.Snapshotter, dir string) error {
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if u, ok := snap.(hypervisor.UnsyncedSaver); ok {
		return u.SaveStateUnsynced(ctx, statePath(dir))
	}
	return snap.SaveState(ctx, statePath(dir))
}

func syncState(dir string) error {
	if err := storage.SyncData(statePath(dir)); err != nil {
		return err
	}
	return atomicfile.SyncDir(dir)
}
