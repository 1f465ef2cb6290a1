package network

import (
	"log/slog"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// newNS creates a fresh network namespace and returns a handle to it. The
// calling goroutine's thread never stays in it: the namespace is created on
// a helper thread that switches back (or is discarded if it cannot). The
// namespace, and every link in it, goes away at cleanup.
func newNS(t *testing.T) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		ns, err := netns.New() // unshare(CLONE_NEWNET): this thread is now in ns
		if err != nil {
			ch <- result{err: err} // thread state unknown: leave it locked
			return
		}
		if err := netns.Set(orig); err != nil {
			ns.Close()
			ch <- result{err: err} // stays locked; discarded on exit
			return
		}
		runtime.UnlockOSThread()
		ch <- result{ns: ns}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("create netns: %v", r.err)
	}
	t.Cleanup(func() { r.ns.Close() })
	return r.ns
}

// nsHandle opens a netlink handle in ns for the test's own checks.
func nsHandle(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

// nsManager returns a Manager working in a new namespace, and a handle to
// that namespace.
func nsManager(t *testing.T, cfg Config) (*Manager, *netlink.Handle, netns.NsHandle) {
	t.Helper()
	ns := newNS(t)
	m, err := New(cfg, testLogger(t), WithNetNS(ns))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m, nsHandle(t, ns), ns
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// addLink adds an up veth link called name (its peer is name+"p") to the
// namespace of h. The host kernel has no dummy driver; veth is built in.
func addLink(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	if err := h.LinkAdd(v); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	for _, n := range []string{name + "p", name} {
		l, err := h.LinkByName(n)
		if err != nil {
			t.Fatalf("look up %s: %v", n, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up: %v", n, err)
		}
	}
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
