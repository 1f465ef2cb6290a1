package agentd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

// setNetwork gives the guest's interface the identity of a clone: a new
// MAC, a new IPv4 address (replacing the old ones), a default route, and
// optionally an empty ARP cache. It runs in the calling goroutine's
// network namespace.
func (s *Server) setNetwork(_ context.Context, st io.ReadWriter, req *proto.Request) error {
	r := req.Network
	if r == nil {
		return errMissing(proto.MethodSetNetwork)
	}
	if err := configureLink(r); err != nil {
		return fmt.Errorf("set_network: %w", err)
	}
	return sendResult(st, nil)
}

func configureLink(r *proto.NetworkRequest) error {
	return configureLinkTimed(r, func(_ string, f func() error) error { return f() })
}

// configureLinkTimed is configureLink with each part run through timed
// (the refresh call reports how long each took).
func configureLinkTimed(r *proto.NetworkRequest, timed func(part string, f func() error) error) error {
	var link netlink.Link
	err := timed("net.find", func() (err error) { link, err = findLink(r.OldMAC); return err })
	if err != nil {
		return err
	}
	if r.MAC != "" {
		if err := timed("net.mac", func() (err error) { link, err = setMAC(link, r.MAC); return err }); err != nil {
			return err
		}
	}
	if err := timed("net.up", func() error { return netlink.LinkSetUp(link) }); err != nil {
		return fmt.Errorf("link up: %w", err)
	}
	var ip net.IP
	if r.IP != "" {
		if err := timed("net.addr", func() (err error) { ip, err = replaceAddress(link, r.IP, r.PrefixLen); return err }); err != nil {
			return err
		}
	}
	if r.Gateway != "" {
		gw := net.ParseIP(r.Gateway).To4()
		if gw == nil {
			return fmt.Errorf("gateway %q is not an IPv4 address", r.Gateway)
		}
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}
		if err := timed("net.route", func() error { return netlink.RouteReplace(route) }); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	if r.FlushNeighbors {
		if err := timed("net.neigh", flushNeighbors); err != nil {
			return err
		}
	}
	if ip != nil {
		// Best effort: tell the segment our new MAC before anyone asks.
		_ = timed("net.announce", func() error {
			_ = announce(link.Attrs().Index, link.Attrs().HardwareAddr, ip)
			return nil
		})
	}
	return nil
}

// findLink returns the interface with MAC mac, or with mac empty the first
// Ethernet interface that is not loopback.
func findLink(mac string) (netlink.Link, error) {
	var want net.HardwareAddr
	if mac != "" {
		var err error
		if want, err = net.ParseMAC(mac); err != nil {
			return nil, err
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		a := l.Attrs()
		switch {
		case want != nil && bytes.Equal(a.HardwareAddr, want):
			return l, nil
		case want == nil && a.Flags&net.FlagLoopback == 0 && len(a.HardwareAddr) == 6:
			return l, nil
		}
	}
	if want != nil {
		return nil, fmt.Errorf("no interface with MAC %s", want)
	}
	return nil, errors.New("no network interface")
}

// setMAC changes the link's MAC; a driver that refuses while the link is up
// gets it while down. It returns the link as it is now.
func setMAC(link netlink.Link, mac string) (netlink.Link, error) {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(link.Attrs().HardwareAddr, hw) {
		return link, nil
	}
	if err := netlink.LinkSetHardwareAddr(link, hw); err != nil {
		if derr := netlink.LinkSetDown(link); derr != nil {
			return nil, fmt.Errorf("set MAC %s: %w", hw, err)
		}
		if err := netlink.LinkSetHardwareAddr(link, hw); err != nil {
			return nil, fmt.Errorf("set MAC %s: %w", hw, err)
		}
	}
	return netlink.LinkByIndex(link.Attrs().Index)
}

// replaceAddress makes ip/prefix the link's only IPv4 address.
func replaceAddress(link netlink.Link, ip string, prefix int) (net.IP, error) {
	addr, err := netlink.ParseAddr(fmt.Sprintf("%s/%d", ip, prefix))
	if err != nil {
		return nil, err
	}
	if addr.IP.To4() == nil {
		return nil, fmt.Errorf("%s is not an IPv4 address", ip)
	}
	old, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range old {
		if a.IPNet.String() == addr.IPNet.String() {
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			return nil, fmt.Errorf("remove address %s: %w", a.IPNet, err)
		}
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return nil, fmt.Errorf("address %s: %w", addr.IPNet, err)
	}
	return addr.IP.To4(), nil
}

// flushNeighbors forgets every learned IPv4 neighbour (peers may have new
// MACs too); entries configured by hand (permanent, noarp) stay.
func flushNeighbors() error {
	neighs, err := netlink.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list neighbours: %w", err)
	}
	for _, n := range neighs {
		if n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 {
			continue
		}
		if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove neighbour %s: %w", n.IP, err)
		}
	}
	return nil
}

// announce broadcasts a gratuitous ARP request (sender and target both ip)
// so that peers and bridges learn that ip now lives at mac.
func announce(ifindex int, mac net.HardwareAddr, ip net.IP) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	frame := make([]byte, 0, 42)
	frame = append(append(frame, bcast...), mac...)
	frame = binary.BigEndian.AppendUint16(frame, unix.ETH_P_ARP)
	frame = binary.BigEndian.AppendUint16(frame, 1)             // hardware: Ethernet
	frame = binary.BigEndian.AppendUint16(frame, unix.ETH_P_IP) // protocol: IPv4
	frame = append(frame, 6, 4)                                 // address lengths
	frame = binary.BigEndian.AppendUint16(frame, 1)             // request
	frame = append(append(frame, mac...), ip...)                // sender
	frame = append(append(frame, make([]byte, 6)...), ip...)    // target
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifindex, Halen: 6}
	copy(sa.Addr[:], bcast)
	return unix.Sendto(fd, frame, 0, sa)
}

// htons converts to network byte order, as AF_PACKET wants its protocol.
func htons(v uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, v))
}
