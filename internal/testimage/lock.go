package testimage

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// withLock runs fn while holding an exclusive flock on path, so that test
// binaries running in parallel (go test ./...) build a cache entry once
// instead of racing on it.
func withLock(path string, fn func() error) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("lock %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", path, err)
	}
	defer unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return fn()
}
