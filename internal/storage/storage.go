// Package storage makes and removes the disk images of instances: the
// writable overlay disk and the small raw config disk.
//
// The overlay disk is a qcow2 file whose backing file is an empty ext4 file
// system of the requested size (an "overlay template", made once per size
// and never written again). Creating an overlay therefore writes only a
// qcow2 header (qcow2.go, no qemu-img process), whatever the size, and a
// fork can later share a frozen
// overlay as the backing file of two new ones instead of copying it.
package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/atomicfile"
)

// Store creates disk images.
type Store struct {
	templateDir string
	mkfs        string

	mu sync.Mutex // serializes template creation within this process
}

// New returns a Store that keeps overlay templates in templateDir.
func New(templateDir string) *Store {
	return &Store{templateDir: templateDir, mkfs: "mkfs.ext4"}
}

// CreateOverlay creates path as a qcow2 overlay holding an empty ext4 file
// system of sizeBytes. sizeBytes is rounded up to a MiB.
func (s *Store) CreateOverlay(ctx context.Context, path string, sizeBytes int64) error {
	sizeBytes = (sizeBytes + (1<<20 - 1)) &^ (1<<20 - 1)
	tmpl, err := s.template(ctx, sizeBytes)
	if err != nil {
		return err
	}
	return s.createQCOW2(ctx, path, tmpl)
}

// createQCOW2 writes path as an empty qcow2 overlay of the raw template
// backing (qcow2.go), of the template's size.
func (s *Store) createQCOW2(_ context.Context, path, backing string) error {
	fi, err := os.Stat(backing)
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	return writeQCOW2Overlay(path, backing, "raw", uint64(fi.Size()))
}

// template returns the path of the empty ext4 template of sizeBytes,
// making it if needed. A file lock keeps concurrent daemons from racing.
func (s *Store) template(ctx context.Context, sizeBytes int64) (string, error) {
	path := filepath.Join(s.templateDir, strconv.FormatInt(sizeBytes, 10)+".ext4")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.MkdirAll(s.templateDir, 0o755); err != nil {
		return "", fmt.Errorf("storage: %w", err)
	}
	unlock, err := lockFile(filepath.Join(s.templateDir, ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	if err := s.mkfs1(ctx, tmp, sizeBytes); err != nil {
		_ = os.Remove(tmp)
		return "", err
	}
	if err := os.Chmod(tmp, 0o444); err != nil {
		return "", fmt.Errorf("storage: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("storage: %w", err)
	}
	return path, atomicfile.SyncDir(s.templateDir)
}

// mkfs1 makes an empty ext4 file system in a sparse file. Lazy init keeps
// it sparse; the guest mounts it with noinit_itable so it stays so.
func (s *Store) mkfs1(ctx context.Context, path string, sizeBytes int64) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	err = f.Truncate(sizeBytes)
	f.Close()
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	cmd := exec.CommandContext(ctx, s.mkfs, "-q", "-F", "-m", "0",
		"-E", "lazy_itable_init=1,lazy_journal_init=1", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("storage: mkfs.ext4: %w: %s", err, out)
	}
	f, err = os.Open(path)
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	defer f.Close()
	return f.Sync()
}

func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("storage: lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("storage: lock: %w", err)
	}
	return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// WriteConfigDisk writes a raw config disk image with content.
func WriteConfigDisk(path string, content []byte) error {
	return atomicfile.WriteFile(path, content, 0o644)
}

// CreateMemoryFile creates (or resets) a sparse file of sizeBytes to back
// guest RAM.
func CreateMemoryFile(path string, sizeBytes int64) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("storage: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(sizeBytes); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	return nil
}

// AllocatedBytes returns the bytes a file really occupies on disk.
func AllocatedBytes(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}
