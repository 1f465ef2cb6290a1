package network

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/vishvananda/netlink"
)

// bridgeAddrs returns the bridge's IPv4 addresses.
func bridgeAddrs(t *testing.T, h *netlink.Handle, br netlink.Link) []netip.Prefix {
	t.Helper()
	addrs, err := h.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		p, _ := toPrefix(a.IPNet)
		out = append(out, p)
	}
	return out
}

func mustBridge(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("bridge %s: %v", name, err)
	}
	if _, ok := l.(*netlink.Bridge); !ok {
		t.Fatalf("%s is a %s", name, l.Type())
	}
	return l
}

func TestEnsureBridge(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want netip.Prefix
	}{
		{"defaults", Config{}, netip.MustParsePrefix("10.100.0.1/16")},
		{"custom", Config{BridgeName: "testbr", Subnet: netip.MustParsePrefix("192.168.77.0/24")}, netip.MustParsePrefix("192.168.77.1/24")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, h, _ := nsManager(t, tc.cfg)
			ctx := context.Background()
			if err := m.EnsureBridge(ctx); err != nil {
				t.Fatalf("EnsureBridge: %v", err)
			}
			br := mustBridge(t, h, m.BridgeName())
			if br.Attrs().Flags&net.FlagUp == 0 {
				t.Fatal("bridge is not up")
			}
			if got := bridgeAddrs(t, h, br); len(got) != 1 || got[0] != tc.want {
				t.Fatalf("bridge addresses %v, want [%s]", got, tc.want)
			}
			// Idempotent: same link, same MAC, still exactly one address.
			if err := m.EnsureBridge(ctx); err != nil {
				t.Fatalf("second EnsureBridge: %v", err)
			}
			again := mustBridge(t, h, m.BridgeName())
			if again.Attrs().Index != br.Attrs().Index || again.Attrs().HardwareAddr.String() != br.Attrs().HardwareAddr.String() {
				t.Fatal("second EnsureBridge replaced the bridge or its MAC")
			}
			if got := bridgeAddrs(t, h, again); len(got) != 1 || got[0] != tc.want {
				t.Fatalf("after second call: addresses %v", got)
			}
			// A fresh Manager (daemon restart) finds the bridge as it is.
			m2, err := New(tc.cfg, testLogger(t), WithNetNS(m.ns))
			if err != nil {
				t.Fatal(err)
			}
			defer m2.Close()
			if err := m2.EnsureBridge(ctx); err != nil {
				t.Fatalf("EnsureBridge after restart: %v", err)
			}
		})
	}
}

func TestEnsureBridgeFixesState(t *testing.T) {
	m, h, _ := nsManager(t, Config{})
	ctx := context.Background()
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	br := mustBridge(t, h, "hmbr0")
	// A stale address from an older subnet setting, and the bridge down.
	stale := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 100, 9, 9), Mask: net.CIDRMask(24, 32)}}
	if err := h.AddrAdd(br, stale); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetDown(br); err != nil {
		t.Fatal(err)
	}
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	br = mustBridge(t, h, "hmbr0")
	if got := bridgeAddrs(t, h, br); len(got) != 1 || got[0] != netip.MustParsePrefix("10.100.0.1/16") {
		t.Fatalf("addresses %v", got)
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		t.Fatal("bridge is not up")
	}
}

func TestEnsureBridgeRefusesOverlap(t *testing.T) {
	ipnet := func(s string) *net.IPNet {
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			panic(err)
		}
		return n
	}
	for _, tc := range []struct {
		name    string
		addr    string // "ip/len" on a dummy link
		route   string // destination of a route via the dummy link
		wantErr bool
	}{
		{name: "address inside", addr: "10.100.5.1/24", wantErr: true},
		{name: "address around", addr: "10.0.0.1/8", wantErr: true},
		{name: "route inside", addr: "172.20.0.1/24", route: "10.100.200.0/24", wantErr: true},
		{name: "route around", addr: "172.20.0.1/24", route: "10.96.0.0/12", wantErr: true},
		{name: "neighbour address", addr: "10.101.0.1/16"},
		{name: "default route", addr: "172.20.0.1/24", route: "0.0.0.0/0"},
		{name: "other route", addr: "172.20.0.1/24", route: "10.101.0.0/16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, h, _ := nsManager(t, Config{})
			d := addLink(t, h, "uplink0")
			ip, n, _ := net.ParseCIDR(tc.addr)
			n.IP = ip
			if err := h.AddrAdd(d, &netlink.Addr{IPNet: n}); err != nil {
				t.Fatal(err)
			}
			if tc.route != "" {
				r := &netlink.Route{LinkIndex: d.Attrs().Index, Dst: ipnet(tc.route)}
				if err := h.RouteAdd(r); err != nil {
					t.Fatalf("add route: %v", err)
				}
			}
			err := m.EnsureBridge(context.Background())
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("EnsureBridge: %v", err)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Fatalf("EnsureBridge = %v, want failed precondition", err)
			}
			t.Logf("refused: %v", err)
			if _, err := h.LinkByName("hmbr0"); err == nil {
				t.Fatal("bridge was created despite the overlap")
			}
		})
	}
}

func TestEnsureBridgeNameTakenByOtherLink(t *testing.T) {
	m, h, _ := nsManager(t, Config{})
	addLink(t, h, "hmbr0")
	if err := m.EnsureBridge(context.Background()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("EnsureBridge = %v, want failed precondition", err)
	}
}
