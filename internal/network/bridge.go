package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/vishvananda/netlink"
)

// dumpRetries bounds retries of a netlink dump that the kernel interrupted
// because the table changed while it was being read.
const dumpRetries = 3

// dump calls f until it returns something other than ErrDumpInterrupted, at
// most dumpRetries+1 times.
func dump[T any](f func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := f()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < dumpRetries {
			continue
		}
		return v, err
	}
}

// EnsureBridge makes the bridge exist with the gateway address and be up. It
// is idempotent and safe to call at every daemon start. It changes nothing
// and returns an error of class errdefs.ErrFailedPrecondition when the subnet
// overlaps an address or route of another link, or when a link with the
// bridge's name exists but is not a bridge.
func (m *Manager) EnsureBridge(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	br, err := m.findBridge()
	if err != nil {
		return err
	}
	brIndex := 0
	if br != nil {
		brIndex = br.Attrs().Index
	}
	if err := m.checkOverlap(brIndex); err != nil {
		return err
	}
	if br == nil {
		if br, err = m.createBridge(); err != nil {
			return err
		}
	}
	m.pool.reserveHostMAC(br.Attrs().HardwareAddr)
	if err := m.setGateway(br); err != nil {
		return err
	}
	if err := m.h.LinkSetUp(br); err != nil {
		return fmt.Errorf("network: set bridge %s up: %w", m.cfg.BridgeName, err)
	}
	return nil
}

// findBridge returns the bridge, or nil when no link has its name.
func (m *Manager) findBridge() (netlink.Link, error) {
	l, err := m.linkByName(m.cfg.BridgeName)
	if err != nil || l == nil {
		return nil, err
	}
	if _, ok := l.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("network: link %s exists but is a %s, not a bridge: %w",
			m.cfg.BridgeName, l.Type(), errdefs.ErrFailedPrecondition)
	}
	return l, nil
}

// linkByName returns the link called name, or nil when there is none.
func (m *Manager) linkByName(name string) (netlink.Link, error) {
	l, err := m.h.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("network: look up link %s: %w", name, err)
	}
	return l, nil
}

// createBridge adds the bridge with a fixed random MAC. A bridge whose MAC
// was not set explicitly takes the lowest MAC of its ports and changes it as
// TAPs come and go, which makes guests' ARP entries for the gateway stale;
// an explicitly set MAC stays.
func (m *Manager) createBridge() (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = m.cfg.BridgeName
	attrs.HardwareAddr = randomMAC()
	if err := m.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		return nil, fmt.Errorf("network: create bridge %s: %w", m.cfg.BridgeName, err)
	}
	m.log.Info("created bridge", "mac", attrs.HardwareAddr.String())
	br, err := m.h.LinkByName(m.cfg.BridgeName)
	if err != nil {
		return nil, fmt.Errorf("network: look up new bridge %s: %w", m.cfg.BridgeName, err)
	}
	return br, nil
}

// checkOverlap fails when the subnet overlaps an IPv4 address or a main-table
// route of any link other than the bridge (index brIndex, 0 if none yet).
// Default routes do not count.
func (m *Manager) checkOverlap(brIndex int) error {
	addrs, err := dump(func() ([]netlink.Addr, error) { return m.h.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("network: list addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := toPrefix(a.IPNet); ok && a.LinkIndex != brIndex && p.Overlaps(m.cfg.Subnet) {
			return m.overlapError("address", p, a.LinkIndex)
		}
	}
	routes, err := dump(func() ([]netlink.Route, error) { return m.h.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("network: list routes: %w", err)
	}
	for _, r := range routes {
		p, ok := toPrefix(r.Dst)
		if !ok || p.Bits() == 0 || (brIndex != 0 && r.LinkIndex == brIndex) {
			continue
		}
		if p.Overlaps(m.cfg.Subnet) {
			return m.overlapError("route", p, r.LinkIndex)
		}
	}
	return nil
}

func (m *Manager) overlapError(what string, p netip.Prefix, linkIndex int) error {
	link := fmt.Sprintf("link index %d", linkIndex)
	if l, err := m.h.LinkByIndex(linkIndex); err == nil {
		link = "link " + l.Attrs().Name
	}
	return fmt.Errorf("network: subnet %s overlaps %s %s of %s; configure a subnet that is not in use: %w",
		m.cfg.Subnet, what, p, link, errdefs.ErrFailedPrecondition)
}

// toPrefix converts an IPv4 net.IPNet to a netip.Prefix.
func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), a.Unmap().Is4()
}

// setGateway gives the bridge the gateway address and removes any other IPv4
// address from it (left over from an earlier subnet setting).
func (m *Manager) setGateway(br netlink.Link) error {
	want := netip.PrefixFrom(m.sub.gateway(), m.cfg.Subnet.Bits())
	addrs, err := dump(func() ([]netlink.Addr, error) { return m.h.AddrList(br, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("network: list addresses of %s: %w", m.cfg.BridgeName, err)
	}
	have := false
	for _, a := range addrs {
		p, _ := toPrefix(a.IPNet)
		if p == want {
			have = true
			continue
		}
		m.log.Info("removing stale bridge address", "addr", p)
		if err := m.h.AddrDel(br, &a); err != nil {
			return fmt.Errorf("network: remove address %s from %s: %w", p, m.cfg.BridgeName, err)
		}
	}
	if have {
		return nil
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: want.Addr().AsSlice(), Mask: net.CIDRMask(want.Bits(), 32)}}
	if err := m.h.AddrReplace(br, addr); err != nil {
		return fmt.Errorf("network: add address %s to %s: %w", want, m.cfg.BridgeName, err)
	}
	return nil
}
