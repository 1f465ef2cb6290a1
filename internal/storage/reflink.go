package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/atomicfile"
)

// Cloning: on a file system with reflinks (XFS made with reflink=1,
// btrfs), a file can be frozen without taking it from its owner: Clone
// makes a second file that shares the first one's blocks (FICLONE, in time
// that grows with the file's extents, not its bytes), and the two diverge
// copy-on-write in the file system. The owner keeps writing its own file,
// so a running VM keeps its RAM file mapped shared and its overlay open,
// and every later standby of it saves device state only.

// SupportsClone reports whether dir's file system can clone files.
func SupportsClone(dir string) bool {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false
	}
	src, err := os.CreateTemp(dir, ".clone-probe-*")
	if err != nil {
		return false
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return false
	}
	dst, err := os.CreateTemp(dir, ".clone-probe-*")
	if err != nil {
		return false
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())) == nil
}

// Clone makes dst a read-only copy-on-write clone of src (both on one
// file system that supports it): written to a temp name, synced, then
// renamed, so dst either does not exist or is complete. Dirty pages of
// src (a RAM file mapped by a running VM) are written back first by the
// file system; fdatasync src beforehand to do that outside a pause.
func Clone(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("storage: clone: %w", err)
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("storage: clone: %w", err)
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o444)
	if err != nil {
		return fmt.Errorf("storage: clone: %w", err)
	}
	err = unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
	if err != nil {
		err = fmt.Errorf("storage: clone %s: %w", src, err)
	} else if err = out.Sync(); err != nil {
		err = fmt.Errorf("storage: clone %s: %w", src, err)
	}
	if cerr := out.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(dst))
}

// WriteBack writes the dirty pages of path to disk chunk by chunk
// (sync_file_range), then fdatasyncs it, stopping early when ctx ends: a VM
// that writes to a page under write-back waits for that page's I/O, so a
// VM started on the file meanwhile should not find a whole file's worth of
// it in flight. A missing file is not an error.
func WriteBack(ctx context.Context, path string, chunk int64) error {
	f, err := openIfExists(path)
	if f == nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	const flags = unix.SYNC_FILE_RANGE_WAIT_BEFORE | unix.SYNC_FILE_RANGE_WRITE | unix.SYNC_FILE_RANGE_WAIT_AFTER
	for off := int64(0); off < st.Size(); off += chunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := unix.SyncFileRange(int(f.Fd()), off, min(chunk, st.Size()-off), flags); err != nil {
			return fmt.Errorf("write back %s: %w", path, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return unix.Fdatasync(int(f.Fd()))
}

// SyncData writes back the dirty pages of path (fdatasync). A missing file
// is not an error.
func SyncData(path string) error {
	f, err := openIfExists(path)
	if f == nil {
		return err
	}
	defer f.Close()
	return unix.Fdatasync(int(f.Fd()))
}

// openIfExists opens path for reading; a missing file is (nil, nil).
func openIfExists(path string) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return f, nil
}
