package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/hypervisor"
)

// Config configures the QEMU backend.
type Config struct {
	// Binary is the QEMU executable; default "qemu-system-x86_64".
	Binary string
	// Accel is "kvm" or "tcg"; default "tcg". Use Probe to choose.
	Accel string
	// TCGCodeMiB is TCG's tb-size for specs that do not set one; 0 keeps
	// QEMU's default.
	TCGCodeMiB int
}

// QEMU is the hypervisor.Hypervisor for qemu-system-x86_64.
type QEMU struct {
	cfg Config
	log *slog.Logger
}

// New returns the QEMU backend.
func New(cfg Config, log *slog.Logger) *QEMU {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	if cfg.Accel == "" {
		cfg.Accel = "tcg"
	}
	return &QEMU{cfg: cfg, log: log}
}

// Type implements hypervisor.Hypervisor.
func (q *QEMU) Type() hypervisor.Type { return hypervisor.QEMU }

// Accel is the accelerator VMs are started with.
func (q *QEMU) Accel() string { return q.cfg.Accel }

// Args returns the QEMU command line for spec, binary first.
func (q *QEMU) Args(spec hypervisor.Spec) []string {
	if spec.Accel == "" {
		spec.Accel = q.cfg.Accel
	}
	if spec.TCGCodeMiB == 0 {
		spec.TCGCodeMiB = q.cfg.TCGCodeMiB
	}
	return append([]string{q.cfg.Binary}, buildArgs(spec)...)
}

// Start implements hypervisor.Hypervisor.
func (q *QEMU) Start(ctx context.Context, spec hypervisor.Spec) (hypervisor.VM, error) {
	args := q.Args(spec)
	logf, err := os.OpenFile(spec.VMMLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("qemu: vmm log: %w", err)
	}
	defer logf.Close()
	_ = os.Remove(spec.ControlSocket)
	_ = os.Remove(spec.PIDFile)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own session: the VM must not receive signals sent to the daemon's
	// process group, and it outlives the daemon.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemu: start: %w", err)
	}
	vm, err := newVM(cmd.Process.Pid, spec)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	go func() { _ = cmd.Wait() }() // reap our child; vm tracks exit via pidfd
	if err := vm.waitControl(ctx); err != nil {
		_ = vm.Kill()
		_ = vm.Wait(context.Background())
		return nil, fmt.Errorf("qemu: %w%s", err, logTail(spec.VMMLog))
	}
	return vm, nil
}

// Attach implements hypervisor.Hypervisor.
func (q *QEMU) Attach(ctx context.Context, spec hypervisor.Spec) (hypervisor.VM, error) {
	b, err := os.ReadFile(spec.PIDFile)
	if err != nil {
		return nil, hypervisor.ErrNotRunning
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return nil, hypervisor.ErrNotRunning
	}
	if !isOurQEMU(pid, spec.ControlSocket) {
		return nil, hypervisor.ErrNotRunning
	}
	vm, err := newVM(pid, spec)
	if err != nil {
		return nil, hypervisor.ErrNotRunning
	}
	if vm.Exited() {
		vm.close()
		return nil, hypervisor.ErrNotRunning
	}
	return vm, nil
}

// isOurQEMU guards against pid reuse: the process must be the QEMU whose
// command line names this control socket.
func isOurQEMU(pid int, controlSocket string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return bytes.Contains(b, []byte(escapeComma(controlSocket)))
}

// vm is a QEMU process, ours or adopted. Its exit is observed through a
// pidfd registered with the Go runtime's poller, so a waiting goroutine
// costs no wake-ups.
type vm struct {
	pid   int
	spec  hypervisor.Spec
	pidfd *os.File
}

func newVM(pid int, spec hypervisor.Spec) (*vm, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("qemu: pidfd_open %d: %w", pid, err)
	}
	return &vm{pid: pid, spec: spec, pidfd: os.NewFile(uintptr(fd), "pidfd")}, nil
}

func (v *vm) PID() int { return v.pid }

func (v *vm) close() { _ = v.pidfd.Close() }

// Exited reports whether the process has exited, without blocking.
func (v *vm) Exited() bool {
	rc, err := v.pidfd.SyscallConn()
	if err != nil {
		return true
	}
	exited := true
	_ = rc.Control(func(fd uintptr) { exited = pidfdReadable(int(fd)) })
	return exited
}

func pidfdReadable(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// Wait blocks until the process exits or ctx ends. Each call waits on its
// own duplicate of the pidfd, so that one caller's deadline never wakes
// another.
func (v *vm) Wait(ctx context.Context) error {
	f, err := v.dupPidfd()
	if err != nil {
		return nil // closed: the process was seen to exit
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Now()) })
	defer stop()
	err = rc.Read(func(fd uintptr) bool { return pidfdReadable(int(fd)) })
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}

func (v *vm) dupPidfd() (*os.File, error) {
	rc, err := v.pidfd.SyscallConn()
	if err != nil {
		return nil, err
	}
	dup := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(dup), "pidfd"), nil
}

func (v *vm) Kill() error {
	rc, err := v.pidfd.SyscallConn()
	if err != nil {
		return hypervisor.ErrNotRunning
	}
	var serr error
	_ = rc.Control(func(fd uintptr) { serr = unix.PidfdSendSignal(int(fd), unix.SIGKILL, nil, 0) })
	if errors.Is(serr, unix.ESRCH) {
		return hypervisor.ErrNotRunning
	}
	if serr != nil {
		return fmt.Errorf("qemu: kill %d: %w", v.pid, serr)
	}
	return nil
}

// waitControl waits until QMP answers, or the process dies.
func (v *vm) waitControl(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if m, err := dialMonitor(ctx, v.spec.ControlSocket); err == nil {
			m.Close()
			return nil
		}
		if v.Exited() {
			return errors.New("QEMU exited during start")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("QMP not ready: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (v *vm) withMonitor(ctx context.Context, fn func(*monitor) error) error {
	if v.Exited() {
		return hypervisor.ErrNotRunning
	}
	m, err := dialMonitor(ctx, v.spec.ControlSocket)
	if err != nil {
		if v.Exited() {
			return hypervisor.ErrNotRunning
		}
		return err
	}
	defer m.Close()
	return fn(m)
}

func (v *vm) Status(ctx context.Context) (hypervisor.Status, error) {
	var st statusInfo
	err := v.withMonitor(ctx, func(m *monitor) (err error) {
		st, err = m.queryStatus(ctx)
		return err
	})
	if err != nil {
		return "", err
	}
	switch st.Status {
	case "running":
		return hypervisor.StatusRunning, nil
	case "paused", "suspended", "prelaunch", "inmigrate", "postmigrate", "finish-migrate":
		return hypervisor.StatusPaused, nil
	case "shutdown", "guest-panicked", "internal-error":
		return hypervisor.StatusShutdown, nil
	}
	return hypervisor.StatusOther, nil
}

func (v *vm) RequestShutdown(ctx context.Context) error {
	return v.withMonitor(ctx, func(m *monitor) error { return m.sendCtrlAltDel(ctx) })
}

// logTail returns the end of the VMM log, to explain a failed start.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return ": " + strings.TrimSpace(string(b))
}
