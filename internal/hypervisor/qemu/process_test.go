package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/hypervisor"
)

// The test binary doubles as a fake qemu-system-x86_64: a wrapper script
// (see fakeBinary) execs it with HYPEMAN_FAKE_QEMU set to a mode, and it
// then parses -qmp and -pidfile like QEMU, writes its pid file and speaks
// minimal QMP on the control socket.
func TestMain(m *testing.M) {
	if mode, ok := os.LookupEnv("HYPEMAN_FAKE_QEMU"); ok {
		os.Exit(fakeQEMU(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// Fake QEMU modes.
const (
	modeObey   = "obey"   // exits on Ctrl-Alt-Del, as a guest that powers off
	modeIgnore = "ignore" // acknowledges Ctrl-Alt-Del and keeps running
	modeDie    = "die"    // exits at once with an error on stderr
	modeNoQMP  = "no-qmp" // writes its pid file but never listens
)

// shutdownMarker is created next to the pid file when the fake receives
// Ctrl-Alt-Del.
const shutdownMarker = "shutdown-received"

func fakeQEMU(mode string, args []string) int {
	// A fake that outlives a failed test must not linger.
	time.AfterFunc(60*time.Second, func() { os.Exit(3) })
	var qmp, pidFile string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-qmp":
			qmp = args[i+1]
		case "-pidfile":
			pidFile = args[i+1]
		}
	}
	fmt.Fprintln(os.Stderr, "fake qemu starting:", mode)
	if mode == modeDie {
		fmt.Fprintln(os.Stderr, "qemu-system-x86_64: fake fatal error: no such device")
		return 1
	}
	sock, ok := unescapeQMPPath(qmp)
	if !ok || pidFile == "" {
		fmt.Fprintf(os.Stderr, "bad args: -qmp %q -pidfile %q\n", qmp, pidFile)
		return 2
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if mode == modeNoQMP {
		select {}
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	marker := filepath.Join(filepath.Dir(pidFile), shutdownMarker)
	handle := func(c qmpCommand) []string {
		switch c.Execute {
		case "send-key":
			_ = os.WriteFile(marker, nil, 0o644)
			if mode == modeObey {
				time.AfterFunc(20*time.Millisecond, func() { os.Exit(0) })
			}
		case "quit":
			time.AfterFunc(20*time.Millisecond, func() { os.Exit(0) })
		}
		return defaultQMP(c)
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			return 2
		}
		serveQMPConn(conn, qmpGreeting, handle, nil) // one client at a time, as QEMU
	}
}

// unescapeQMPPath returns the socket path of "unix:PATH,server=on,...",
// where commas inside PATH are doubled.
func unescapeQMPPath(v string) (string, bool) {
	v, ok := strings.CutPrefix(v, "unix:")
	if !ok {
		return "", false
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == ',' {
			if i+1 < len(v) && v[i+1] == ',' {
				b.WriteByte(',')
				i++
				continue
			}
			break
		}
		b.WriteByte(v[i])
	}
	return b.String(), true
}

// fakeBinary writes a wrapper script that runs the test binary as a fake
// QEMU in mode, for Config.Binary.
func fakeBinary(t *testing.T, mode string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "fake-qemu")
	script := fmt.Sprintf("#!/bin/sh\nHYPEMAN_FAKE_QEMU=%s exec %q \"$@\"\n", mode, self)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// vmSpec returns a spec whose files live in a new short dir with a comma
// in its name, so that the escaping of the control socket path is
// exercised end to end (argv, the fake's parser, the pid-reuse guard).
func vmSpec(t *testing.T) hypervisor.Spec {
	t.Helper()
	dir := shortDir(t, "hq,")
	return hypervisor.Spec{
		Name: "test", VCPUs: 1, MemoryBytes: 64 << 20,
		ControlSocket: filepath.Join(dir, "qmp.sock"),
		PIDFile:       filepath.Join(dir, "qemu.pid"),
		VMMLog:        filepath.Join(dir, "vmm.log"),
		ConsoleLog:    filepath.Join(dir, "app.log"),
	}
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startFake starts a fake QEMU in mode and kills it at cleanup.
func startFake(t *testing.T, mode string) (*QEMU, hypervisor.Spec, hypervisor.VM) {
	t.Helper()
	q := New(Config{Binary: fakeBinary(t, mode)}, discardLog())
	spec := vmSpec(t)
	vm, err := q.Start(testCtx(t), spec)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		_ = vm.Kill()
		_ = vm.Wait(context.Background())
	})
	return q, spec, vm
}

func TestStartAttachKill(t *testing.T) {
	q, spec, vm := startFake(t, modeObey)
	ctx := testCtx(t)

	b, err := os.ReadFile(spec.PIDFile)
	if err != nil {
		t.Fatal(err)
	}
	if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid != vm.PID() || pid <= 0 {
		t.Errorf("pid file %q, VM pid %d", b, vm.PID())
	}
	if vm.Exited() {
		t.Fatal("Exited right after start")
	}
	if st, err := vm.Status(ctx); err != nil || st != hypervisor.StatusRunning {
		t.Errorf("status %q, %v", st, err)
	}
	if log, _ := os.ReadFile(spec.VMMLog); !strings.Contains(string(log), "fake qemu starting") {
		t.Errorf("vmm log %q lacks the VMM's output", log)
	}

	// A restarted daemon finds it by pid file and control socket.
	adopted, err := q.Attach(ctx, hypervisor.Spec{ControlSocket: spec.ControlSocket, PIDFile: spec.PIDFile})
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	if adopted.PID() != vm.PID() || adopted.Exited() {
		t.Errorf("adopted pid %d exited %v", adopted.PID(), adopted.Exited())
	}
	if st, err := adopted.Status(ctx); err != nil || st != hypervisor.StatusRunning {
		t.Errorf("adopted status %q, %v", st, err)
	}

	// Wait honours its context while the VM runs.
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	err = adopted.Wait(wctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait on a running VM: %v, want the context's error", err)
	}

	if err := vm.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, v := range []hypervisor.VM{vm, adopted} {
		if err := v.Wait(ctx); err != nil {
			t.Fatalf("wait: %v", err)
		}
		if !v.Exited() {
			t.Error("Exited false after Wait")
		}
	}
	if _, err := vm.Status(ctx); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Status of an exited VM: %v, want ErrNotRunning", err)
	}
	if err := vm.RequestShutdown(ctx); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("RequestShutdown of an exited VM: %v, want ErrNotRunning", err)
	}
	waitGone(t, vm.PID())
	// Once reaped (Start's goroutine does it), the pidfd reports ESRCH.
	if err := adopted.Kill(); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Kill of an exited VM: %v, want ErrNotRunning", err)
	}
	if _, err := q.Attach(ctx, spec); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Attach after exit: %v, want ErrNotRunning", err)
	}
}

// waitGone waits until pid no longer exists (Start's goroutine reaps it).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for unix.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still exists", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAttachRejectsOtherProcesses(t *testing.T) {
	sleeper := exec.Command("sleep", "30")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() })
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		pidFile *string // nil: no pid file
	}{
		{"no pid file", nil},
		{"garbage", ptr("not a pid")},
		{"zero", ptr("0")},
		{"negative", ptr("-1")},
		{"exited process", ptr(strconv.Itoa(gone.Process.Pid))},
		{"pid reused by an unrelated process", ptr(strconv.Itoa(sleeper.Process.Pid))},
		{"pid reused by the daemon itself", ptr(strconv.Itoa(os.Getpid()))},
	}
	q := New(Config{}, discardLog())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := vmSpec(t)
			if tt.pidFile != nil {
				if err := os.WriteFile(spec.PIDFile, []byte(*tt.pidFile+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			vm, err := q.Attach(testCtx(t), spec)
			if !errors.Is(err, hypervisor.ErrNotRunning) {
				t.Errorf("Attach = %v, %v; want ErrNotRunning", vm, err)
			}
		})
	}

	// Another fake QEMU whose command line names a different socket.
	t.Run("pid of a VM with another control socket", func(t *testing.T) {
		_, other, vm := startFake(t, modeObey)
		spec := vmSpec(t)
		if err := os.WriteFile(spec.PIDFile, []byte(strconv.Itoa(vm.PID())), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := q.Attach(testCtx(t), spec); !errors.Is(err, hypervisor.ErrNotRunning) {
			t.Errorf("Attach = %v; want ErrNotRunning (the process runs %s)", err, other.ControlSocket)
		}
	})
}

func ptr[T any](v T) *T { return &v }

func TestStopGraceful(t *testing.T) {
	_, spec, vm := startFake(t, modeObey)
	start := time.Now()
	killed, err := hypervisor.Stop(testCtx(t), vm, 3*time.Second, nil)
	if err != nil || killed {
		t.Fatalf("Stop = killed %v, %v; want a graceful stop", killed, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("graceful stop took %v", d)
	}
	if !vm.Exited() {
		t.Error("VM runs after Stop")
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(spec.PIDFile), shutdownMarker)); err != nil {
		t.Errorf("guest never got Ctrl-Alt-Del: %v", err)
	}
}

func TestStopKillsGuestThatIgnoresShutdown(t *testing.T) {
	_, spec, vm := startFake(t, modeIgnore)
	const timeout = 200 * time.Millisecond
	start := time.Now()
	killed, err := hypervisor.Stop(testCtx(t), vm, timeout, nil)
	if err != nil || !killed {
		t.Fatalf("Stop = killed %v, %v; want killed", killed, err)
	}
	if d := time.Since(start); d < timeout {
		t.Errorf("killed after %v, before the %v grace period", d, timeout)
	}
	if !vm.Exited() {
		t.Error("VM runs after Stop")
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(spec.PIDFile), shutdownMarker)); err != nil {
		t.Errorf("shutdown was not requested first: %v", err)
	}
}

func TestStartFailures(t *testing.T) {
	tests := []struct {
		name    string
		mode    string
		timeout time.Duration
		want    []string
	}{
		{"VMM exits at once", modeDie, 5 * time.Second,
			[]string{"QEMU exited during start", "fake fatal error: no such device"}},
		{"QMP never answers", modeNoQMP, 300 * time.Millisecond, []string{"QMP not ready"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := New(Config{Binary: fakeBinary(t, tt.mode)}, discardLog())
			spec := vmSpec(t)
			ctx, cancel := context.WithTimeout(context.Background(), tt.timeout)
			defer cancel()
			vm, err := q.Start(ctx, spec)
			if err == nil {
				_ = vm.Kill()
				t.Fatal("start succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			// The process does not survive a failed start.
			if b, err := os.ReadFile(spec.PIDFile); err == nil {
				if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 {
					waitGone(t, pid)
				}
			}
		})
	}
}

func TestStartVMMLogUnwritable(t *testing.T) {
	q := New(Config{Binary: fakeBinary(t, modeObey)}, discardLog())
	spec := vmSpec(t)
	spec.VMMLog = filepath.Join(spec.VMMLog, "nodir", "vmm.log")
	if _, err := q.Start(testCtx(t), spec); err == nil || !strings.Contains(err.Error(), "vmm log") {
		t.Errorf("err %v, want a vmm log error", err)
	}
}

// Status maps QEMU's run states to the hypervisor's.
func TestStatusMapping(t *testing.T) {
	tests := map[string]hypervisor.Status{
		"running":        hypervisor.StatusRunning,
		"paused":         hypervisor.StatusPaused,
		"suspended":      hypervisor.StatusPaused,
		"prelaunch":      hypervisor.StatusPaused,
		"inmigrate":      hypervisor.StatusPaused,
		"postmigrate":    hypervisor.StatusPaused,
		"finish-migrate": hypervisor.StatusPaused,
		"shutdown":       hypervisor.StatusShutdown,
		"guest-panicked": hypervisor.StatusShutdown,
		"internal-error": hypervisor.StatusShutdown,
		"io-error":       hypervisor.StatusOther,
		"watchdog":       hypervisor.StatusOther,
	}
	for qemuStatus, want := range tests {
		t.Run(qemuStatus, func(t *testing.T) {
			srv := newFakeQMP(t, qmpGreeting, func(c qmpCommand) []string {
				if c.Execute == "query-status" {
					return []string{qmpReturn(c, `{"status": "`+qemuStatus+`", "running": false}`)}
				}
				return defaultQMP(c)
			})
			// This test process stands in for the VMM: it is alive.
			v, err := newVM(os.Getpid(), hypervisor.Spec{ControlSocket: srv.path})
			if err != nil {
				t.Fatal(err)
			}
			defer v.close()
			got, err := v.Status(testCtx(t))
			if err != nil || got != want {
				t.Errorf("Status = %q, %v; want %q", got, err, want)
			}
		})
	}
}

// Wait is called concurrently on one VM (the daemon's watcher waits for
// the exit while Stop waits out its grace period): a Wait whose context
// ends must not end the other Waits while the process runs.
func TestConcurrentWaitsAreIndependent(t *testing.T) {
	_, _, vm := startFake(t, modeObey)
	long := make(chan error, 1)
	go func() { long <- vm.Wait(testCtx(t)) }()
	time.Sleep(20 * time.Millisecond) // let the long Wait block first

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err := vm.Wait(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("short Wait: %v, want the context's error", err)
	}
	select {
	case err := <-long:
		t.Fatalf("the long Wait returned %v while the VM still runs (exited %v)", err, vm.Exited())
	case <-time.After(200 * time.Millisecond):
	}
	if err := vm.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-long; err != nil {
		t.Errorf("long Wait after kill: %v", err)
	}
}
