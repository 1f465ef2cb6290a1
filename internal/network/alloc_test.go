package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// plainManager returns a Manager in the current namespace. Allocation never
// touches the kernel, so these tests change nothing on the host (New only
// opens a netlink socket).
func plainManager(t *testing.T, subnet string) *Manager {
	t.Helper()
	m, err := New(Config{Subnet: netip.MustParsePrefix(subnet)}, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// id returns a CUID2-shaped instance ID (24 lowercase alphanumerics) whose
// first 13 characters differ for different n.
func id(n int) string {
	return fmt.Sprintf("x%012dabcdefghijk", n)
}

func TestConfigDefaults(t *testing.T) {
	c, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.BridgeName != "hmbr0" || c.Subnet != netip.MustParsePrefix("10.100.0.0/16") {
		t.Fatalf("defaults = %+v", c)
	}
	if g := newSubnet(c.Subnet).gateway(); g != netip.MustParseAddr("10.100.0.1") {
		t.Fatalf("gateway = %s", g)
	}
	c, err = Config{Subnet: netip.MustParsePrefix("192.168.7.9/24")}.withDefaults()
	if err != nil || c.Subnet != netip.MustParsePrefix("192.168.7.0/24") {
		t.Fatalf("host bits not masked: %v %v", c.Subnet, err)
	}
}

func TestConfigInvalid(t *testing.T) {
	for name, c := range map[string]Config{
		"slash31":     {Subnet: netip.MustParsePrefix("10.0.0.0/31")},
		"ipv6":        {Subnet: netip.MustParsePrefix("fd00::/64")},
		"long bridge": {BridgeName: "a-very-long-bridge0"},
		"slash":       {BridgeName: "br/0"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := New(c, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("New(%+v) = %v, want invalid argument", c, err)
			}
		})
	}
}

func TestTAPName(t *testing.T) {
	got := TAPName("abcdefghijklmnopqrstuvwx")
	if got != "hmabcdefghijklm" || len(got) != 15 {
		t.Fatalf("TAPName = %q (%d bytes)", got, len(got))
	}
	if got := TAPName("short"); got != "hmshort" {
		t.Fatalf("TAPName(short) = %q", got)
	}
}

func TestAllocateUntilExhausted(t *testing.T) {
	for _, tc := range []struct {
		subnet string
		guests int // usable guest addresses
	}{
		{"10.9.0.0/30", 1},
		{"10.9.0.0/29", 5},
		{"10.9.0.16/28", 13},
		{"172.30.5.0/24", 253},
	} {
		t.Run(tc.subnet, func(t *testing.T) {
			m := plainManager(t, tc.subnet)
			p := netip.MustParsePrefix(tc.subnet)
			s := newSubnet(p)
			forbidden := map[netip.Addr]string{s.addr(0): "network", s.gateway(): "gateway", s.addr(s.size - 1): "broadcast"}
			ips, macs := map[netip.Addr]bool{}, map[string]bool{}
			for i := range tc.guests {
				a, err := m.Allocate(id(i))
				if err != nil {
					t.Fatalf("Allocate #%d: %v", i, err)
				}
				checkAllocation(t, a, p, forbidden)
				if ips[a.IP] || macs[a.MAC] {
					t.Fatalf("duplicate IP or MAC: %+v", a)
				}
				ips[a.IP], macs[a.MAC] = true, true
			}
			_, err := m.Allocate(id(tc.guests))
			if !errors.Is(err, errdefs.ErrConflict) || errdefs.Code(err) != "insufficient_resources" {
				t.Fatalf("Allocate on a full subnet = %v (code %q)", err, errdefs.Code(err))
			}
			want := fmt.Sprintf("no free IP address in %s", p)
			if errdefs.Message(err) != want {
				t.Fatalf("message %q, want %q", errdefs.Message(err), want)
			}
			// Freeing one address makes exactly that one available again.
			freed, _ := m.Lookup(id(0))
			m.Release(id(0))
			a, err := m.Allocate("newcomer")
			if err != nil || a.IP != freed.IP {
				t.Fatalf("after Release: %+v, %v; want IP %s", a, err, freed.IP)
			}
		})
	}
}

func checkAllocation(t *testing.T, a Allocation, p netip.Prefix, forbidden map[netip.Addr]string) {
	t.Helper()
	if !p.Contains(a.IP) {
		t.Fatalf("IP %s not in %s", a.IP, p)
	}
	if what, bad := forbidden[a.IP]; bad {
		t.Fatalf("IP %s is the %s address", a.IP, what)
	}
	if a.Prefix != p.Bits() || a.Gateway != newSubnet(p).gateway() {
		t.Fatalf("prefix/gateway = /%d %s", a.Prefix, a.Gateway)
	}
	mac, err := net.ParseMAC(a.MAC)
	if err != nil || !strings.HasPrefix(a.MAC, "02:") || mac.String() != a.MAC {
		t.Fatalf("MAC %q is not canonical 02:xx:..: %v", a.MAC, err)
	}
	if a.TAP != TAPName(a.InstanceID) || len(a.TAP) > 15 {
		t.Fatalf("TAP %q for %s", a.TAP, a.InstanceID)
	}
}

func TestAllocateIdempotentAndValidates(t *testing.T) {
	m := plainManager(t, "10.9.0.0/24")
	a, err := m.Allocate(id(1))
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Allocate(id(1))
	if err != nil || b != a {
		t.Fatalf("second Allocate = %+v, %v; want %+v", b, err, a)
	}
	for _, bad := range []string{"", "UPPER", "with-dash", "x/y"} {
		if _, err := m.Allocate(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Allocate(%q) = %v, want invalid argument", bad, err)
		}
	}
	// Two IDs with the same 13-character prefix would share a TAP name.
	if _, err := m.Allocate(id(1)[:13] + "zzzzzzzzzzz"); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("TAP name collision = %v, want conflict", err)
	}
}

func TestRestoreThenAllocate(t *testing.T) {
	m := plainManager(t, "10.9.0.0/29") // guests .2 to .6
	restored := []Allocation{
		{InstanceID: "running1", IP: netip.MustParseAddr("10.9.0.2"), MAC: "02:00:00:00:00:01"},
		{InstanceID: "standby1", IP: netip.MustParseAddr("10.9.0.4"), MAC: "02:AA:00:00:00:02", Prefix: 29},
		{InstanceID: "running2", IP: netip.MustParseAddr("10.9.0.6"), MAC: "02:00:00:00:00:03", TAP: "hmrunning2"},
	}
	if err := m.Restore(restored); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	// The MAC source first offers every restored MAC, then fresh ones.
	offers := []string{"02:00:00:00:00:01", "02:aa:00:00:00:02", "02:00:00:00:00:03", "02:00:00:00:00:10", "02:00:00:00:00:03", "02:00:00:00:00:11"}
	m.pool.newMAC = func() net.HardwareAddr {
		mac, _ := net.ParseMAC(offers[0])
		offers = offers[1:]
		return mac
	}
	taken := map[netip.Addr]bool{}
	takenMAC := map[string]bool{"02:00:00:00:00:01": true, "02:aa:00:00:00:02": true, "02:00:00:00:00:03": true}
	for _, r := range restored {
		taken[r.IP] = true
	}
	for i := range 2 {
		a, err := m.Allocate(id(i))
		if err != nil {
			t.Fatalf("Allocate: %v", err)
		}
		if taken[a.IP] || takenMAC[a.MAC] {
			t.Fatalf("Allocate handed out a restored or used IP/MAC: %+v", a)
		}
		taken[a.IP], takenMAC[a.MAC] = true, true
	}
	if _, err := m.Allocate(id(9)); errdefs.Code(err) != "insufficient_resources" {
		t.Fatalf("subnet should be full, got %v", err)
	}
	if a, ok := m.Lookup("standby1"); !ok || a.MAC != "02:aa:00:00:00:02" || a.TAP != "hmstandby1" || a.Gateway != netip.MustParseAddr("10.9.0.1") {
		t.Fatalf("restored allocation not normalized: %+v", a)
	}
}

func TestRestoreReportsBadEntries(t *testing.T) {
	m := plainManager(t, "10.9.0.0/24")
	ip := netip.MustParseAddr
	err := m.Restore([]Allocation{
		{InstanceID: "good", IP: ip("10.9.0.10"), MAC: "02:00:00:00:00:01"},
		{InstanceID: "dupip", IP: ip("10.9.0.10"), MAC: "02:00:00:00:00:02"},
		{InstanceID: "dupmac", IP: ip("10.9.0.11"), MAC: "02:00:00:00:00:01"},
		{InstanceID: "gateway", IP: ip("10.9.0.1"), MAC: "02:00:00:00:00:03"},
		{InstanceID: "outside", IP: ip("10.8.0.5"), MAC: "02:00:00:00:00:04"},
		{InstanceID: "multicast", IP: ip("10.9.0.12"), MAC: "03:00:00:00:00:05"},
		{InstanceID: "oldprefix", IP: ip("10.9.0.13"), MAC: "02:00:00:00:00:06", Prefix: 16},
		{InstanceID: "good2", IP: ip("10.9.0.14"), MAC: "02:00:00:00:00:07"},
	})
	if err == nil {
		t.Fatal("Restore accepted conflicting entries")
	}
	for _, want := range []string{"dupip", "dupmac", "gateway", "outside", "multicast", "oldprefix"} {
		if !strings.Contains(err.Error(), "restore "+want+":") {
			t.Errorf("error does not mention %s: %v", want, err)
		}
		if _, ok := m.Lookup(want); ok {
			t.Errorf("%s was recorded", want)
		}
	}
	for _, want := range []string{"good", "good2"} {
		if _, ok := m.Lookup(want); !ok {
			t.Errorf("%s was not recorded", want)
		}
	}
}

func TestReserve(t *testing.T) {
	m := plainManager(t, "10.9.0.0/24")
	a, err := m.Allocate("first")
	if err != nil {
		t.Fatal(err)
	}
	// Standby keeps the identity; restore reserves it again.
	m.Release("first")
	if err := m.Reserve(a); err != nil {
		t.Fatalf("Reserve after Release: %v", err)
	}
	if err := m.Reserve(a); err != nil {
		t.Fatalf("Reserve is not idempotent: %v", err)
	}
	other := a
	other.InstanceID, other.TAP = "second", ""
	if err := m.Reserve(other); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("Reserve of a held IP = %v, want conflict", err)
	}
	other.IP = netip.MustParseAddr("10.9.0.200")
	if err := m.Reserve(other); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("Reserve of a held MAC = %v, want conflict", err)
	}
	other.MAC = "02:11:22:33:44:55"
	if err := m.Reserve(other); err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	// Reserving a new identity for an instance replaces its old one.
	moved := other
	moved.IP = netip.MustParseAddr("10.9.0.201")
	if err := m.Reserve(moved); err != nil {
		t.Fatal(err)
	}
	if err := m.Reserve(Allocation{InstanceID: "third", IP: netip.MustParseAddr("10.9.0.200"), MAC: "02:00:00:00:00:99"}); err != nil {
		t.Fatalf("old IP of a moved instance is still held: %v", err)
	}
	bad := Allocation{InstanceID: "fourth", IP: netip.MustParseAddr("10.9.0.255"), MAC: "02:00:00:00:00:98"}
	if err := m.Reserve(bad); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Reserve of the broadcast address = %v", err)
	}
}

func TestAllocateConcurrent(t *testing.T) {
	m := plainManager(t, "10.9.0.0/24") // 253 guest addresses
	const n = 300
	var wg sync.WaitGroup
	results := make([]Allocation, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { results[i], errs[i] = m.Allocate(id(i)) })
	}
	wg.Wait()
	ips, macs := map[netip.Addr]bool{}, map[string]bool{}
	full := 0
	for i := range n {
		if errs[i] != nil {
			if errdefs.Code(errs[i]) != "insufficient_resources" {
				t.Fatalf("Allocate: %v", errs[i])
			}
			full++
			continue
		}
		if ips[results[i].IP] || macs[results[i].MAC] {
			t.Fatalf("duplicate: %+v", results[i])
		}
		ips[results[i].IP], macs[results[i].MAC] = true, true
	}
	if len(ips) != 253 || full != n-253 {
		t.Fatalf("%d allocated, %d refused; want 253 and %d", len(ips), full, n-253)
	}
}

func TestAllocateStartsAtRandom(t *testing.T) {
	seen := map[netip.Addr]bool{}
	for range 20 {
		a, err := plainManager(t, "10.100.0.0/16").Allocate("one")
		if err != nil {
			t.Fatal(err)
		}
		seen[a.IP] = true
	}
	if len(seen) < 10 {
		t.Fatalf("20 fresh managers handed out only %d distinct first IPs", len(seen))
	}
}
