package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hypeman-vm/hypeman/internal/atomicfile"
)

// Freezing: fork and snapshots never copy a disk or guest RAM. Instead the
// file is frozen: renamed (in O(1), on the same file system) into a shared
// directory, made read-only, and from then on only read:
//
//   - a frozen overlay becomes a layer, the backing file of new qcow2
//     overlays (the source's and each fork's), so each sees the frozen
//     content and writes only its own changes;
//   - a frozen RAM file becomes a memory base that every VM restored from it
//     maps privately: pages are shared through the page cache until a VM
//     writes them (copy-on-write in the kernel).
//
// A VM process that still has the file open or mapped (a paused source)
// keeps using the same inode; it must not write to it after the freeze
// point, which is why sources are paused first.

// Freeze moves src to dst (in another directory of the same file system)
// and makes it read-only. The directories are synced so the move survives
// a crash.
func Freeze(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("storage: freeze: %w", err)
	}
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("storage: freeze %s: %w", src, err)
	}
	if err := os.Chmod(dst, 0o444); err != nil {
		return fmt.Errorf("storage: freeze %s: %w", dst, err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(dst)); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(src))
}

// CreateOverlayOn creates path as an empty qcow2 overlay whose backing file
// is the frozen layer backing (a qcow2 file).
// Its size is the layer's.
func (s *Store) CreateOverlayOn(_ context.Context, path, backing string) error {
	size, err := qcow2Size(backing)
	if err != nil {
		return err
	}
	return writeQCOW2Overlay(path, backing, "qcow2", size)
}

// RemoveUnreferenced deletes the files of dir whose names are not in keep
// (names without directory). It returns the names removed.
func RemoveUnreferenced(dir string, keep map[string]bool) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		if keep[e.Name()] || e.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, e.Name())
	}
	return removed, errors.Join(errs...)
}
