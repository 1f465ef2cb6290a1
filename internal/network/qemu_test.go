package network

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestQEMUOpensTAP starts QEMU (TCG, paused with -S) inside the test's
// namespace with the TAP as its netdev, and checks that QEMU attaches to it:
// the kernel turns the TAP's carrier on (IFF_LOWER_UP) only while a process
// has it open. It does so twice on the same TAP, as a restore from standby
// would. (A paused QEMU with no guest driver reads no frames, so the
// counters are tested in TestTAPStats with the test as the reader.)
func TestQEMUOpensTAP(t *testing.T) {
	for _, bin := range []string{"qemu-system-x86_64", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s: %v", bin, err)
		}
	}
	m, h, ns := nsManager(t, Config{})
	ctx := context.Background()
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	a := allocTAP(t, m, "qemutapaaaaaaaaaaaaaaaaa")
	if lowerUp(t, h, a.TAP) {
		t.Fatal("TAP has carrier before anyone opened it")
	}
	for run := 1; run <= 2; run++ {
		q := startQEMU(t, ns, a)
		waitFor(t, 5*time.Second, q.exited, &q.out, "QEMU to attach to the TAP", func() bool { return lowerUp(t, h, a.TAP) })
		t.Logf("run %d: QEMU attached to %s after %v", run, a.TAP, time.Since(q.start).Round(time.Millisecond))
		select {
		case err := <-q.exited:
			q.exited <- err // for stop at cleanup
			t.Fatalf("QEMU exited: %v\n%s", err, q.out.String())
		case <-time.After(time.Second):
		}

		// Re-running CreateTAP while QEMU holds the TAP keeps it attached.
		before := mustTAP(t, h, a.TAP).Attrs().Index
		if err := m.CreateTAP(ctx, a); err != nil {
			t.Fatal(err)
		}
		if mustTAP(t, h, a.TAP).Attrs().Index != before || !lowerUp(t, h, a.TAP) {
			t.Fatal("CreateTAP disturbed an attached TAP")
		}

		q.stop()
		if _, err := h.LinkByName(a.TAP); err != nil {
			t.Fatalf("persistent TAP vanished when QEMU exited: %v", err)
		}
		waitFor(t, 2*time.Second, nil, nil, "carrier to drop", func() bool { return !lowerUp(t, h, a.TAP) })
	}
}

type qemuProc struct {
	cmd    *exec.Cmd
	start  time.Time
	out    bytes.Buffer
	exited chan error
	done   bool
}

// startQEMU runs a paused QEMU whose netdev is a's TAP, inside ns (entered
// by nsenter through the namespace fd passed as fd 3). It is killed at
// cleanup if still running.
func startQEMU(t *testing.T, ns netns.NsHandle, a Allocation) *qemuProc {
	t.Helper()
	fd, err := unix.Dup(int(ns))
	if err != nil {
		t.Fatal(err)
	}
	nsFile := os.NewFile(uintptr(fd), "netns")
	defer nsFile.Close()
	q := &qemuProc{exited: make(chan error, 1)}
	q.cmd = exec.Command("nsenter", "--net=/proc/self/fd/3",
		"qemu-system-x86_64", "-nodefaults", "-display", "none", "-machine", "q35", "-accel", "tcg",
		"-netdev", "tap,id=n0,ifname="+a.TAP+",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac="+a.MAC, "-S")
	q.cmd.ExtraFiles = []*os.File{nsFile} // fd 3 in the child
	q.cmd.Stdout, q.cmd.Stderr = &q.out, &q.out
	q.start = time.Now()
	if err := q.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { q.exited <- q.cmd.Wait() }()
	t.Cleanup(q.stop)
	return q
}

func (q *qemuProc) stop() {
	if q.done {
		return
	}
	q.done = true
	_ = q.cmd.Process.Kill()
	<-q.exited
}

func lowerUp(t *testing.T, h *netlink.Handle, name string) bool {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0
}

// waitFor polls cond until it holds, failing the test after d or when the
// process behind exited (may be nil) ends; out (may be nil) is its output.
func waitFor(t *testing.T, d time.Duration, exited chan error, out *bytes.Buffer, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		select {
		case err := <-exited:
			exited <- err // for the process's cleanup
			t.Fatalf("waiting for %s: QEMU exited: %v\n%s", what, err, out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

// sendUDP sends one datagram to ip:9 (discard) from the calling thread's
// namespace.
func sendUDP(ip string) error {
	c, err := net.Dial("udp4", net.JoinHostPort(ip, "9"))
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte("hello"))
	return err
}
