package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/hypervisor"
)

// Snapshots use QEMU's migration to a file descriptor. When guest RAM lives
// in a shared memory-backend-file, the x-ignore-shared capability leaves it
// out of the stream: the state file holds only device state (a few hundred
// KB, written in milliseconds), and the RAM file is the memory snapshot.

// Pause stops the guest's vCPUs.
func (v *vm) Pause(ctx context.Context) error {
	return v.withMonitor(ctx, func(m *monitor) error { return m.execute(ctx, "stop", nil, nil) })
}

// Resume restarts the guest's vCPUs.
func (v *vm) Resume(ctx context.Context) error {
	return v.withMonitor(ctx, func(m *monitor) error { return m.execute(ctx, "cont", nil, nil) })
}

// SaveState writes the VM's device state (and RAM that is not in a shared
// memory file) to path, atomically and durably. The VM should be paused.
func (v *vm) SaveState(ctx context.Context, path string) error {
	return v.saveState(ctx, path, true)
}

// SaveStateUnsynced is SaveState without the fsync: the file is complete
// when it returns, durable only once the caller syncs it.
func (v *vm) SaveStateUnsynced(ctx context.Context, path string) error {
	return v.saveState(ctx, path, false)
}

func (v *vm) saveState(ctx context.Context, path string, sync bool) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("qemu: save state: %w", err)
	}
	defer os.Remove(tmp)
	defer f.Close()
	err = v.withMonitor(ctx, func(m *monitor) error {
		if err := m.setMigrationCaps(ctx, v.spec.MemoryFile != ""); err != nil {
			return err
		}
		if err := m.sendFD(ctx, "statefd", f); err != nil {
			return err
		}
		if err := m.execute(ctx, "migrate", map[string]any{"uri": "fd:statefd"}, nil); err != nil {
			return err
		}
		return m.waitMigration(ctx, "completed")
	})
	if err != nil {
		return fmt.Errorf("qemu: save state: %w", err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("qemu: save state: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Restore starts a new QEMU for spec and loads the state saved at
// statePath into it. The guest is left paused: call Resume. spec must
// describe the same machine (devices, memory size) as the saved VM; paths
// (sockets, disks, memory file) may differ.
func (q *QEMU) Restore(ctx context.Context, spec hypervisor.Spec, statePath string) (hypervisor.VM, error) {
	vm, err := q.StartIncoming(ctx, spec)
	if err != nil {
		return nil, err
	}
	if err := vm.(hypervisor.StateLoader).LoadState(ctx, statePath); err != nil {
		_ = vm.Kill()
		_ = vm.Wait(context.Background())
		return nil, err
	}
	return vm, nil
}

// StartIncoming starts a QEMU for spec that waits for a saved state
// (LoadState). Its disks stay inactive until the state is loaded, so it
// can start while another VMM still writes them: QEMU reads their
// metadata again when the load completes.
func (q *QEMU) StartIncoming(ctx context.Context, spec hypervisor.Spec) (hypervisor.VM, error) {
	spec.Incoming = true
	return q.Start(ctx, spec)
}

// LoadState loads a saved state into a VM started with StartIncoming. The
// guest is left paused.
func (v *vm) LoadState(ctx context.Context, statePath string) error {
	f, err := os.Open(statePath)
	if err != nil {
		return fmt.Errorf("qemu: load state: %w", err)
	}
	defer f.Close()
	err = v.withMonitor(ctx, func(m *monitor) error {
		if err := m.setMigrationCaps(ctx, v.spec.MemoryFile != ""); err != nil {
			return err
		}
		if err := m.sendFD(ctx, "statefd", f); err != nil {
			return err
		}
		if err := m.execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:statefd"}, nil); err != nil {
			return err
		}
		return m.waitIncoming(ctx)
	})
	if err != nil {
		return fmt.Errorf("qemu: load state %s: %w%s", statePath, err, logTail(v.spec.VMMLog))
	}
	return nil
}

func (m *monitor) setMigrationCaps(ctx context.Context, ignoreShared bool) error {
	caps := []map[string]any{{"capability": "x-ignore-shared", "state": ignoreShared}}
	return m.execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil)
}

// sendFD passes f to QEMU under name (QMP getfd, with the descriptor as
// SCM_RIGHTS ancillary data on the monitor socket).
func (m *monitor) sendFD(ctx context.Context, name string, f *os.File) error {
	uc, ok := m.conn.(*net.UnixConn)
	if !ok {
		return errors.New("qmp: getfd needs a unix socket")
	}
	m.setDeadline(ctx)
	id := m.id.Add(1)
	req := fmt.Sprintf(`{"execute":"getfd","arguments":{"fdname":%q},"id":%d}`+"\n", name, id)
	if _, _, err := uc.WriteMsgUnix([]byte(req), unix.UnixRights(int(f.Fd())), nil); err != nil {
		return fmt.Errorf("qmp: getfd: %w", err)
	}
	return m.awaitReply(ctx, "getfd", id, nil)
}

type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

// waitMigration polls query-migrate until status want, or failure.
func (m *monitor) waitMigration(ctx context.Context, want string) error {
	for {
		var info migrationInfo
		if err := m.execute(ctx, "query-migrate", nil, &info); err != nil {
			return err
		}
		switch info.Status {
		case want:
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", info.Status, info.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// waitIncoming waits until an incoming migration has loaded (the VM is
// then paused, since it was started with -S).
func (m *monitor) waitIncoming(ctx context.Context) error {
	for {
		st, err := m.queryStatus(ctx)
		if err != nil {
			return err
		}
		switch st.Status {
		case "paused", "postmigrate", "running":
			var info migrationInfo
			if err := m.execute(ctx, "query-migrate", nil, &info); err == nil && info.Status == "failed" {
				return fmt.Errorf("incoming migration failed: %s", info.ErrorDesc)
			}
			return nil
		case "inmigrate", "prelaunch":
		default:
			return fmt.Errorf("incoming migration ended in state %s", st.Status)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// MigrateTo moves the running guest of v into dst (a VM started with
// StartIncoming) live: v keeps running while QEMU copies what is not in a
// shared memory file, then stops for the final device state, and dst
// continues. The stream also goes to tee (a snapshot of the device state
// at the stop). It returns how long the guest was paused.
func (v *vm) MigrateTo(ctx context.Context, dst hypervisor.VM, tee io.Writer) (time.Duration, error) {
	to, ok := dst.(*vm)
	if !ok {
		return 0, errors.New("qemu: migrate: destination is not a QEMU VM")
	}
	srcR, srcW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	dstR, dstW, err := os.Pipe()
	if err != nil {
		srcR.Close()
		srcW.Close()
		return 0, err
	}
	defer srcR.Close()
	defer dstW.Close()
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.MultiWriter(dstW, tee), srcR)
		dstW.Close()
		copied <- err
	}()
	dm, err := to.startIncomingFD(ctx, dstR)
	dstR.Close()
	if err != nil {
		srcW.Close()
		return 0, err
	}
	defer dm.Close()
	downtime, err := v.migrateOut(ctx, srcW)
	if err != nil {
		return 0, fmt.Errorf("qemu: migrate: %w%s", err, logTail(v.spec.VMMLog))
	}
	if err := <-copied; err != nil {
		return 0, fmt.Errorf("qemu: migrate: copy stream: %w", err)
	}
	completed := time.Now()
	if err := dm.waitIncoming(ctx); err != nil {
		return 0, fmt.Errorf("qemu: migrate: destination: %w%s", err, logTail(to.spec.VMMLog))
	}
	if err := dm.execute(ctx, "cont", nil, nil); err != nil {
		return 0, err
	}
	return downtime + time.Since(completed), nil
}

// startIncomingFD makes a VM started with StartIncoming read its state
// from r, and returns the open monitor session to wait on.
func (v *vm) startIncomingFD(ctx context.Context, r *os.File) (*monitor, error) {
	m, err := dialMonitor(ctx, v.spec.ControlSocket)
	if err != nil {
		return nil, err
	}
	if err := m.setMigrationCaps(ctx, v.spec.MemoryFile != ""); err != nil {
		m.Close()
		return nil, err
	}
	if err := m.sendFD(ctx, "statefd", r); err != nil {
		m.Close()
		return nil, err
	}
	if err := m.execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:statefd"}, nil); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// migrateOut runs an outgoing migration into w and returns QEMU's
// measured downtime.
func (v *vm) migrateOut(ctx context.Context, w *os.File) (time.Duration, error) {
	var downtime time.Duration
	err := v.withMonitor(ctx, func(m *monitor) error {
		defer w.Close()
		if err := m.setMigrationCaps(ctx, v.spec.MemoryFile != ""); err != nil {
			return err
		}
		if err := m.sendFD(ctx, "statefd", w); err != nil {
			return err
		}
		w.Close() // QEMU has its own copy; ours would keep the stream open
		if err := m.execute(ctx, "migrate", map[string]any{"uri": "fd:statefd"}, nil); err != nil {
			return err
		}
		for {
			var info struct {
				migrationInfo
				Downtime int64 `json:"downtime"`
			}
			if err := m.execute(ctx, "query-migrate", nil, &info); err != nil {
				return err
			}
			switch info.Status {
			case "completed":
				downtime = time.Duration(info.Downtime) * time.Millisecond
				return nil
			case "failed", "cancelled":
				return fmt.Errorf("migration %s: %s", info.Status, info.ErrorDesc)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
	})
	return downtime, err
}
