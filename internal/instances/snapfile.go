package instances

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hypeman-vm/hypeman/internal/atomicfile"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// A memory snapshot is a directory holding the VM's device state ("state")
// and a manifest, written last: the snapshot exists when, and only when,
// its manifest does. The manifest names the RAM file (the instance's own
// file, or a frozen memory base) and the disk (a frozen layer chain, or
// the instance's overlay), with what is needed to verify them before a
// restore: a damaged snapshot is refused, never booted.

const manifestVersion = 1

// manifest describes a snapshot's payload.
type manifest struct {
	SchemaVersion int       `json:"schema_version"`
	CreatedAt     time.Time `json:"created_at"`
	// StateSHA256 and StateSize describe the device state file "state";
	// both are empty for a disk-only snapshot.
	StateSHA256 string `json:"state_sha256,omitempty"`
	StateSize   int64  `json:"state_size,omitempty"`
	// Memory is the RAM file's path and MemoryBytes its size. MemoryShared
	// says the RAM is a VM's own file (mapped shared on restore) rather
	// than a frozen base (mapped privately).
	Memory       string `json:"memory,omitempty"`
	MemoryShared bool   `json:"memory_shared,omitempty"`
	MemoryBytes  int64  `json:"memory_bytes,omitempty"`
}

func manifestPath(dir string) string { return filepath.Join(dir, "manifest.json") }
func statePath(dir string) string    { return filepath.Join(dir, "state") }

// hasManifest reports whether the snapshot in dir is complete.
func hasManifest(dir string) bool {
	_, err := os.Stat(manifestPath(dir))
	return err == nil
}

func readManifest(dir string) (manifest, error) {
	var m manifest
	b, err := os.ReadFile(manifestPath(dir))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("snapshot manifest %s: %w", dir, err)
	}
	if m.SchemaVersion != manifestVersion {
		return m, fmt.Errorf("snapshot manifest %s: schema version %d", dir, m.SchemaVersion)
	}
	return m, nil
}

// writeManifest completes the snapshot in dir: it hashes the state file
// (if any) and writes the manifest atomically.
func writeManifest(dir string, m manifest) error {
	m.SchemaVersion = manifestVersion
	if m.CreatedAt.IsZero() {
		m.CreatedAt = time.Now().UTC()
	}
	if _, err := os.Stat(statePath(dir)); err == nil {
		sum, size, err := hashFile(statePath(dir))
		if err != nil {
			return err
		}
		m.StateSHA256, m.StateSize = sum, size
	}
	return atomicfile.WriteJSON(manifestPath(dir), m)
}

func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// damaged is the error of a snapshot that must not be restored.
func damaged(what, format string, args ...any) error {
	return errdefs.Newf(errdefs.ErrConflict, "snapshot_damaged", "%s is damaged and was not restored: %s", what, fmt.Sprintf(format, args...))
}

// verify checks the snapshot in dir against its manifest: the state file's
// size and hash, the RAM file's size.
func verify(what, dir string, m manifest) error {
	if m.StateSHA256 != "" {
		sum, size, err := hashFile(statePath(dir))
		switch {
		case errors.Is(err, os.ErrNotExist):
			return damaged(what, "its device state file is missing")
		case err != nil:
			return fmt.Errorf("verify %s: %w", what, err)
		case size != m.StateSize:
			return damaged(what, "device state file has %d of %d bytes", size, m.StateSize)
		case sum != m.StateSHA256:
			return damaged(what, "device state file does not match its checksum")
		}
	}
	if m.Memory != "" {
		fi, err := os.Stat(m.Memory)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return damaged(what, "its memory file %s is missing", filepath.Base(m.Memory))
		case err != nil:
			return fmt.Errorf("verify %s: %w", what, err)
		case fi.Size() != m.MemoryBytes:
			return damaged(what, "memory file is truncated: %d of %d bytes", fi.Size(), m.MemoryBytes)
		}
	}
	return nil
}
