package instances

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/hypeman-vm/hypeman/internal/storage"
)

// collectGarbage removes frozen layers and memory bases that no instance
// and no stored snapshot uses any more. What is in use is read from the
// metadata and manifests on disk (the source of truth), so a crash never
// leaves a reference count wrong: at worst a file stays until the next
// collection.
func (m *Manager) collectGarbage() {
	m.gcMu.Lock()
	defer m.gcMu.Unlock()
	layers, mems := map[string]bool{}, map[string]bool{}
	keepMem := func(path string) {
		if path != "" {
			mems[filepath.Base(path)] = true
		}
	}
	ents, _ := os.ReadDir(m.paths.InstancesDir())
	for _, e := range ents {
		meta, err := loadMetadata(m.paths.InstanceMetadata(e.Name()))
		if err != nil {
			if !os.IsNotExist(err) {
				return // an unreadable instance may use anything: keep all
			}
			continue
		}
		for _, l := range meta.Layers {
			layers[l+".qcow2"] = true
		}
		if f := meta.Freeze; f != nil {
			layers[f.Layer+".qcow2"] = true
			if f.Memory != "" {
				mems[f.Memory+".mem"] = true
			}
		}
		if c := meta.Clones; c != nil {
			if c.Layer != "" {
				layers[c.Layer+".qcow2"] = true
			}
			if c.Memory != "" {
				mems[c.Memory+".mem"] = true
			}
		}
		keepMem(meta.MemoryBase)
		if man, err := readManifest(m.paths.InstanceStandbyDir(meta.ID)); err == nil {
			keepMem(man.Memory)
		}
	}
	snaps, _ := os.ReadDir(m.paths.SnapshotsDir())
	for _, e := range snaps {
		rec, err := loadSnapshot(m.paths.SnapshotDir(e.Name()))
		if err != nil {
			if !os.IsNotExist(err) {
				return
			}
			continue
		}
		for _, l := range rec.Layers {
			layers[l+".qcow2"] = true
		}
		keepMem(rec.MemoryBase)
	}
	for dir, keep := range map[string]map[string]bool{m.paths.LayersDir(): layers, m.paths.MemoryDir(): mems} {
		removed, err := storage.RemoveUnreferenced(dir, keep)
		if err != nil {
			m.log.Warn("garbage collection", "dir", dir, "err", err)
		}
		if len(removed) > 0 {
			m.log.Info("removed unused frozen files", "dir", dir, "files", strings.Join(removed, ","))
		}
	}
}
