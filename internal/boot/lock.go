package boot

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// fileLock is an exclusive flock(2) on a lock file. flock locks belong to
// the open file description, so two opens in one process exclude each other
// just as two processes do, and the kernel drops the lock if the holder dies.
type fileLock struct{ f *os.File }

// lockFile takes an exclusive lock on path, creating it if needed, and
// waits until it gets the lock or ctx ends. It polls with LOCK_NB because
// a blocking flock cannot be interrupted by ctx.
func lockFile(ctx context.Context, path string) (*fileLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("boot: open lock %s: %w", path, err)
	}
	delay := 5 * time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &fileLock{f: f}, nil
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			f.Close()
			return nil, fmt.Errorf("boot: flock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("boot: wait for lock %s: %w", path, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// Unlock releases the lock.
func (l *fileLock) Unlock() error {
	return l.f.Close()
}
