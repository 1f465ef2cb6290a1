package initd

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// configureNetwork brings up lo and, when the instance has a network, gives
// the interface with the host-assigned MAC its static address and a default
// route through the gateway. It also sets the hostname.
func (g *guest) configureNetwork() error {
	if g.cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(g.cfg.Hostname)); err != nil {
			return fmt.Errorf("hostname: %w", err)
		}
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo)
	}
	n := g.cfg.Network
	if n == nil {
		return nil
	}
	link, err := waitForLink(n.MAC, 3*time.Second)
	if err != nil {
		return err
	}
	addr, err := netlink.ParseAddr(fmt.Sprintf("%s/%d", n.IP, n.PrefixLen))
	if err != nil {
		return err
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s: %w", addr, err)
	}
	disableIPv6(link.Attrs().Name)
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("link up: %w", err)
	}
	if n.Gateway != "" {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.ParseIP(n.Gateway)}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("default route via %s: %w", n.Gateway, err)
		}
	}
	if len(n.DNS) > 0 {
		var b strings.Builder
		for _, s := range n.DNS {
			fmt.Fprintf(&b, "nameserver %s\n", s)
		}
		_ = os.MkdirAll(newRoot+"/etc", 0o755)
		_ = os.Remove(newRoot + "/etc/resolv.conf")
		if err := os.WriteFile(newRoot+"/etc/resolv.conf", []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// disableIPv6 keeps IPv6 off the instance's interface before it comes up.
// The network is IPv4 only, and the kernel would give the interface a
// link-local address made from its MAC, which every fork resumed from this
// guest's memory would keep: duplicates on the bridge. Loopback keeps ::1.
// A kernel without IPv6 has no such file, which is fine.
func disableIPv6(ifname string) {
	rel := "/proc/sys/net/ipv6/conf/" + ifname + "/disable_ipv6"
	for _, p := range []string{newRoot + rel, rel} {
		if err := os.WriteFile(p, []byte("1"), 0o644); err == nil {
			return
		}
	}
}

func waitForLink(mac string, timeout time.Duration) (netlink.Link, error) {
	want, err := net.ParseMAC(mac)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() == want.String() {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no interface with MAC %s", mac)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
