package network

import (
	"context"
	"errors"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// readyManager returns a Manager in a new namespace with its bridge up.
func readyManager(t *testing.T) (*Manager, *netlink.Handle) {
	t.Helper()
	m, h, _ := nsManager(t, Config{})
	if err := m.EnsureBridge(context.Background()); err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	return m, h
}

func mustTAP(t *testing.T, h *netlink.Handle, name string) *netlink.Tuntap {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("TAP %s: %v", name, err)
	}
	tap, ok := l.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("%s is a %s, not a tuntap", name, l.Type())
	}
	return tap
}

func allocTAP(t *testing.T, m *Manager, instanceID string) Allocation {
	t.Helper()
	a, err := m.Allocate(instanceID)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTAP(context.Background(), a); err != nil {
		t.Fatalf("CreateTAP: %v", err)
	}
	return a
}

func TestCreateAndDeleteTAP(t *testing.T) {
	m, h := readyManager(t)
	ctx := context.Background()
	br := mustBridge(t, h, m.BridgeName())
	a := allocTAP(t, m, "abcdefghijklmnopqrstuvwx")

	tap := mustTAP(t, h, "hmabcdefghijklm")
	if tap.Mode != netlink.TUNTAP_MODE_TAP || tap.NonPersist || tap.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		t.Fatalf("TAP mode %v, non-persistent %v, flags %v", tap.Mode, tap.NonPersist, tap.Flags)
	}
	if tap.Attrs().MasterIndex != br.Attrs().Index {
		t.Fatalf("TAP master index %d, bridge index %d", tap.Attrs().MasterIndex, br.Attrs().Index)
	}
	if tap.Attrs().Flags&net.FlagUp == 0 {
		t.Fatal("TAP is not up")
	}
	if tap.Owner != uint32(os.Geteuid()) || tap.Group != uint32(os.Getegid()) {
		t.Fatalf("TAP owner %d:%d", tap.Owner, tap.Group)
	}
	// The TAP must be in the Manager's namespace, not the test's.
	if _, err := netlink.LinkByName(a.TAP); err == nil {
		t.Fatalf("TAP %s showed up in the test's own namespace", a.TAP)
	}

	// Idempotent: the same device is reused and re-enslaved.
	if err := h.LinkSetNoMaster(tap); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTAP(ctx, a); err != nil {
		t.Fatalf("second CreateTAP: %v", err)
	}
	again := mustTAP(t, h, a.TAP)
	if again.Attrs().Index != tap.Attrs().Index || again.Attrs().MasterIndex != br.Attrs().Index {
		t.Fatal("second CreateTAP did not reuse and re-enslave the TAP")
	}

	if err := m.DeleteTAP(ctx, a.TAP); err != nil {
		t.Fatalf("DeleteTAP: %v", err)
	}
	var nf netlink.LinkNotFoundError
	if _, err := h.LinkByName(a.TAP); !errors.As(err, &nf) {
		t.Fatalf("TAP still there after DeleteTAP: %v", err)
	}
	if err := m.DeleteTAP(ctx, a.TAP); err != nil {
		t.Fatalf("DeleteTAP of a missing TAP: %v", err)
	}
}

func TestCreateTAPReplacesOtherLink(t *testing.T) {
	m, h := readyManager(t)
	a, err := m.Allocate("replaceme")
	if err != nil {
		t.Fatal(err)
	}
	addLink(t, h, a.TAP) // a veth squatting on the TAP's name
	if err := m.CreateTAP(context.Background(), a); err != nil {
		t.Fatalf("CreateTAP: %v", err)
	}
	mustTAP(t, h, a.TAP)
}

func TestCreateTAPNeedsBridge(t *testing.T) {
	m, _, _ := nsManager(t, Config{})
	a, err := m.Allocate("nobridge")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTAP(context.Background(), a); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("CreateTAP without bridge = %v, want failed precondition", err)
	}
	a.TAP = "notours0"
	if err := m.CreateTAP(context.Background(), a); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("CreateTAP with a foreign name = %v, want invalid argument", err)
	}
}

func TestDeleteTAPRefusesNonTAP(t *testing.T) {
	m, h := readyManager(t)
	if err := m.DeleteTAP(context.Background(), m.BridgeName()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("DeleteTAP(bridge) = %v", err)
	}
	mustBridge(t, h, m.BridgeName())
}

func TestCleanupOrphans(t *testing.T) {
	m, h := readyManager(t)
	ctx := context.Background()
	keep := allocTAP(t, m, "keepme")
	gone1 := allocTAP(t, m, "orphanone")
	gone2 := allocTAP(t, m, "orphantwo")
	addLink(t, h, "hmveth0") // hm prefix but not a TAP: not ours
	foreign := "tapforeign0" // a TAP without our prefix: not ours
	if _, err := m.addTAP(foreign); err != nil {
		t.Fatal(err)
	}
	otherDaemon := "hmotherdaemon1" // our prefix, but not on our bridge: another daemon's
	if _, err := m.addTAP(otherDaemon); err != nil {
		t.Fatal(err)
	}

	got, err := m.ListTAPs(ctx)
	want := []string{gone1.TAP, gone2.TAP, keep.TAP}
	slices.Sort(want)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("ListTAPs = %v, %v; want %v", got, err, want)
	}
	if err := m.CleanupOrphans(ctx, map[string]bool{keep.TAP: true}); err != nil {
		t.Fatalf("CleanupOrphans: %v", err)
	}
	if got, _ := m.ListTAPs(ctx); !slices.Equal(got, []string{keep.TAP}) {
		t.Fatalf("after cleanup ListTAPs = %v", got)
	}
	for _, name := range []string{keep.TAP, "hmveth0", foreign, otherDaemon, m.BridgeName()} {
		if _, err := h.LinkByName(name); err != nil {
			t.Errorf("%s was removed: %v", name, err)
		}
	}
	if err := m.CleanupOrphans(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.ListTAPs(ctx); len(got) != 0 {
		t.Fatalf("nil keep left %v", got)
	}
}

func TestTAPStatsMissing(t *testing.T) {
	m, _ := readyManager(t)
	if _, _, err := m.TAPStats("hmnothere"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("TAPStats of a missing TAP = %v", err)
	}
}

// TestTAPStats attaches to the TAP the way QEMU does (open /dev/net/tun in
// the namespace, TUNSETIFF by name), then checks both counters: a UDP
// datagram to the guest IP makes the namespace ARP for it and the bridge
// floods the request out of the TAP (tx, counted when the reader reads it),
// and a frame the "guest" writes is rx.
func TestTAPStats(t *testing.T) {
	m, h := readyManager(t)
	a := allocTAP(t, m, "statsaaaaaaaaaaaaaaaaaaa")
	fd := attachTAP(t, m, a.TAP)
	waitFor(t, 2*time.Second, nil, nil, "carrier", func() bool { return lowerUp(t, h, a.TAP) })

	if err := m.inNS(func() error { return sendUDP(a.IP.String()) }); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n := 0
	waitFor(t, 3*time.Second, nil, nil, "a frame on the TAP", func() bool {
		n, _ = unix.Read(fd, buf)
		return n > 0
	})
	_, tx, err := m.TAPStats(a.TAP)
	if err != nil || tx < uint64(n) {
		t.Fatalf("TAPStats tx = %d, %v; read a %d-byte frame", tx, err, n)
	}

	frame := make([]byte, 60)
	copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})     // broadcast
	copy(frame[6:], []byte{0x02, 0x00, 0x00, 0x00, 0x00, 0x42}) // guest MAC
	copy(frame[12:], []byte{0x88, 0xb5})                        // local experimental ethertype
	if _, err := unix.Write(fd, frame); err != nil {
		t.Fatal(err)
	}
	rx, _, err := m.TAPStats(a.TAP)
	if err != nil || rx < uint64(len(frame)) {
		t.Fatalf("TAPStats rx = %d, %v; wrote %d bytes", rx, err, len(frame))
	}
	t.Logf("rx %d tx %d", rx, tx)
}

// attachTAP opens the TAP called name as a VMM would and returns the
// non-blocking fd, closed at cleanup.
func attachTAP(t *testing.T, m *Manager, name string) int {
	t.Helper()
	fd := -1
	err := m.inNS(func() error {
		var err error
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	})
	if fd >= 0 {
		t.Cleanup(func() { unix.Close(fd) })
	}
	if err != nil {
		t.Fatalf("attach to %s: %v", name, err)
	}
	return fd
}
