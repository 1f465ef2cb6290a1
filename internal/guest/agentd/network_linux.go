package agentd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

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
	if err := s.configureLink(r, untimed); err != nil {
		return fmt.Errorf("set_network: %w", err)
	}
	return sendResult(st, nil)
}

// timer runs one part of a call; refresh's reports how long each took.
type timer func(part string, f func() error) error

func untimed(_ string, f func() error) error { return f() }

// knownLink is the interface the agent configured last: a resumed clone
// finds it without listing links (under emulation, the first netlink dump
// in a new VMM process costs tens of milliseconds of cold code).
type knownLink struct {
	index int
	name  string
	mac   net.HardwareAddr
	up    bool
}

func (s *Server) configureLink(r *proto.NetworkRequest, timed timer) error {
	err := s.configureLinkOnce(r, timed, true)
	if errors.Is(err, unix.ENODEV) {
		// The remembered interface is gone: look it up.
		s.setKnownLink(nil)
		err = s.configureLinkOnce(r, timed, false)
	}
	return err
}

func (s *Server) configureLinkOnce(r *proto.NetworkRequest, timed timer, useKnown bool) error {
	var link netlink.Link
	err := timed("net.find", func() (err error) { link, err = s.findLink(r.OldMAC, useKnown); return err })
	if err != nil {
		return err
	}
	if r.MAC != "" {
		if err := timed("net.mac", func() (err error) { link, err = setMAC(link, r.MAC); return err }); err != nil {
			return err
		}
	}
	// A clone's link is up already (it was when the guest was saved): a
	// no-op netlink call is still cold code in a resumed guest.
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := timed("net.up", func() error { return netlink.LinkSetUp(link) }); err != nil {
			return fmt.Errorf("link up: %w", err)
		}
	}
	a := link.Attrs()
	s.setKnownLink(&knownLink{index: a.Index, name: a.Name, mac: a.HardwareAddr, up: true})
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
		route := &netlink.Route{LinkIndex: a.Index, Gw: gw}
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
		_ = timed("net.announce", func() error { return announceLater(a.Index, a.HardwareAddr, ip) })
	}
	return nil
}

func (s *Server) setKnownLink(l *knownLink) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.known = l
}

// findLink returns the interface with MAC mac (the remembered one, when
// useKnown and its MAC is mac), or with mac empty the first Ethernet
// interface that is not loopback.
func (s *Server) findLink(mac string, useKnown bool) (netlink.Link, error) {
	if useKnown && mac != "" {
		s.mu.Lock()
		k := s.known
		s.mu.Unlock()
		if want, err := net.ParseMAC(mac); err == nil && k != nil && bytes.Equal(k.mac, want) {
			var flags net.Flags
			if k.up {
				flags = net.FlagUp
			}
			return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: k.index, Name: k.name, HardwareAddr: k.mac, Flags: flags}}, nil
		}
	}
	return findLink(mac)
}

// rememberLink looks up the guest's interface ahead of a snapshot (at the
// agent's start), so that a clone's first set_network needs no lookup.
func (s *Server) rememberLink() {
	if l, err := findLink(""); err == nil {
		a := l.Attrs()
		s.setKnownLink(&knownLink{index: a.Index, name: a.Name, mac: a.HardwareAddr, up: a.Flags&net.FlagUp != 0})
	}
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
	a := *link.Attrs()
	if err := netlink.LinkSetHardwareAddr(link, hw); err != nil {
		if derr := netlink.LinkSetDown(link); derr != nil {
			return nil, fmt.Errorf("set MAC %s: %w", hw, err)
		}
		a.Flags &^= net.FlagUp
		if err := netlink.LinkSetHardwareAddr(link, hw); err != nil {
			return nil, fmt.Errorf("set MAC %s: %w", hw, err)
		}
	}
	a.HardwareAddr = hw
	return &netlink.Device{LinkAttrs: a}, nil
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

// announceTimes are when announceLater sends its gratuitous ARPs, after
// the call: a fork's TAP comes up only once the host has the answer, and
// frames sent before are lost.
var announceTimes = []time.Duration{20 * time.Millisecond, 200 * time.Millisecond, time.Second}

// announceLater broadcasts gratuitous ARP requests (sender and target both
// ip) at announceTimes, so that peers and bridges learn that ip now lives
// at mac. The socket is made now, in the caller's network namespace.
func announceLater(ifindex int, mac net.HardwareAddr, ip net.IP) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return err
	}
	frame, sa := garp(ifindex, mac, ip)
	go func() {
		defer unix.Close(fd)
		start := time.Now()
		for _, at := range announceTimes {
			time.Sleep(time.Until(start.Add(at)))
			_ = unix.Sendto(fd, frame, 0, sa)
		}
	}()
	return nil
}

// garp builds a gratuitous ARP request for ip at mac and its destination.
func garp(ifindex int, mac net.HardwareAddr, ip net.IP) ([]byte, *unix.SockaddrLinklayer) {
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
	return frame, sa
}

// htons converts to network byte order, as AF_PACKET wants its protocol.
func htons(v uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, v))
}
