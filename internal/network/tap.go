package network

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/vishvananda/netlink"
)

// tapFlags are the flags a TAP is created with. QEMU's tap backend re-opens
// the device by name with IFF_TAP|IFF_NO_PI (plus IFF_VNET_HDR when it wants
// it); the kernel lets the opener change NO_PI and VNET_HDR but refuses a
// different IFF_MULTI_QUEUE setting, so the device is single-queue to match
// QEMU's default (no queues= option).
const tapFlags = netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR

// CreateTAP makes the persistent TAP a.TAP, enslaves it to the bridge and sets
// it up, so QEMU can open it with -netdev tap,ifname=<a.TAP>,script=no,
// downscript=no. It is owned by the daemon's effective uid and gid. An
// existing single-queue TAP of that name is reused (re-enslaved and set up);
// any other link of that name is deleted and replaced. The bridge must exist
// (EnsureBridge), else the error is of class errdefs.ErrFailedPrecondition.
func (m *Manager) CreateTAP(ctx context.Context, a Allocation) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validTAPName(a.TAP); err != nil {
		return err
	}
	br, err := m.findBridge()
	if err != nil {
		return err
	}
	if br == nil {
		return fmt.Errorf("network: bridge %s does not exist: %w", m.cfg.BridgeName, errdefs.ErrFailedPrecondition)
	}
	tap, err := m.ensureTAPLink(a.TAP)
	if err != nil {
		return err
	}
	if err := m.h.LinkSetMaster(tap, br); err != nil {
		return fmt.Errorf("network: enslave %s to %s: %w", a.TAP, m.cfg.BridgeName, err)
	}
	if err := m.h.LinkSetUp(tap); err != nil {
		return fmt.Errorf("network: set %s up: %w", a.TAP, err)
	}
	m.log.Debug("TAP ready", "tap", a.TAP, "instance", a.InstanceID)
	return nil
}

func validTAPName(name string) error {
	if err := validIfName(name); err != nil {
		return fmt.Errorf("network: TAP name: %w", err)
	}
	if !strings.HasPrefix(name, TAPPrefix) {
		return fmt.Errorf("network: TAP name %q does not start with %q: %w", name, TAPPrefix, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ensureTAPLink returns the TAP called name, reusing a suitable existing one
// and replacing an unsuitable link of that name.
func (m *Manager) ensureTAPLink(name string) (netlink.Link, error) {
	l, err := m.linkByName(name)
	if err != nil {
		return nil, err
	}
	if l != nil && reusableTAP(l) {
		return l, nil
	}
	if l != nil {
		m.log.Warn("replacing link that is not a single-queue TAP", "link", name, "type", l.Type())
		if err := m.h.LinkDel(l); err != nil {
			return nil, fmt.Errorf("network: delete %s to replace it: %w", name, err)
		}
	}
	return m.addTAP(name)
}

func reusableTAP(l netlink.Link) bool {
	t, ok := l.(*netlink.Tuntap)
	return ok && t.Mode == netlink.TUNTAP_MODE_TAP && t.Flags&netlink.TUNTAP_MULTI_QUEUE == 0 && !t.NonPersist
}

// addTAP creates a persistent TAP. The kernel creates a tun device in the
// namespace of the thread that opens /dev/net/tun, so this runs in m's
// namespace (see inNS); the netlink steps inside go through m.h.
func (m *Manager) addTAP(name string) (netlink.Link, error) {
	t := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     tapFlags,
		Owner:     uint32(os.Geteuid()),
		Group:     uint32(os.Getegid()),
	}
	if err := m.inNS(func() error { return m.h.LinkAdd(t) }); err != nil {
		return nil, fmt.Errorf("network: create TAP %s: %w", name, err)
	}
	l, err := m.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("network: look up new TAP %s: %w", name, err)
	}
	return l, nil
}

// DeleteTAP removes the TAP called name. A missing TAP is not an error. It
// refuses (errdefs.ErrFailedPrecondition) to delete a link of that name that
// is not a tun/tap device.
func (m *Manager) DeleteTAP(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l, err := m.linkByName(name)
	if err != nil || l == nil {
		return err
	}
	if _, ok := l.(*netlink.Tuntap); !ok {
		return fmt.Errorf("network: %s is a %s, not a TAP; not deleting it: %w", name, l.Type(), errdefs.ErrFailedPrecondition)
	}
	if err := m.h.LinkDel(l); err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("network: delete TAP %s: %w", name, err)
	}
	return nil
}

// ListTAPs returns the names, sorted, of the TAPs this manager owns: tun/tap
// links whose name starts with "hm" and that are enslaved to its bridge.
func (m *Manager) ListTAPs(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	links, err := dump(m.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("network: list links: %w", err)
	}
	bridge := 0
	for _, l := range links {
		if l.Attrs().Name == m.cfg.BridgeName {
			bridge = l.Attrs().Index
		}
	}
	var names []string
	for _, l := range links {
		// Only TAPs on our bridge are ours: another daemon in the same
		// namespace (with its own bridge) owns the others.
		if _, ok := l.(*netlink.Tuntap); ok && strings.HasPrefix(l.Attrs().Name, TAPPrefix) &&
			bridge != 0 && l.Attrs().MasterIndex == bridge {
			names = append(names, l.Attrs().Name)
		}
	}
	slices.Sort(names)
	return names, nil
}

// CleanupOrphans deletes every TAP from ListTAPs whose name is not in keep.
// The daemon calls it at startup with the TAPs of the instances whose VMM may
// still run. A nil or empty keep deletes all of them. It tries every TAP and
// returns the failures joined.
func (m *Manager) CleanupOrphans(ctx context.Context, keep map[string]bool) error {
	names, err := m.ListTAPs(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		if keep[name] {
			continue
		}
		if err := m.DeleteTAP(ctx, name); err != nil {
			errs = append(errs, err)
			continue
		}
		m.log.Info("deleted orphan TAP", "tap", name)
	}
	return errors.Join(errs...)
}

// TAPStats returns the byte counters of the TAP called name, as the host sees
// them: rx is what the guest sent, tx what it was sent. A missing TAP is an
// error of class errdefs.ErrNotFound.
func (m *Manager) TAPStats(name string) (rx, tx uint64, err error) {
	l, err := m.linkByName(name)
	if err != nil {
		return 0, 0, err
	}
	if l == nil {
		return 0, 0, fmt.Errorf("network: TAP %s: %w", name, errdefs.ErrNotFound)
	}
	s := l.Attrs().Statistics
	if s == nil {
		return 0, 0, nil
	}
	return s.RxBytes, s.TxBytes, nil
}

// SetTAPUp sets the TAP called name up or down. A TAP that is down passes
// no frames to or from the bridge: a restored fork is kept so until the
// guest has taken its new MAC and address, so that it can never announce
// its source's identity on the bridge.
func (m *Manager) SetTAPUp(ctx context.Context, name string, up bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l, err := m.linkByName(name)
	if err != nil {
		return err
	}
	if l == nil {
		return fmt.Errorf("network: TAP %s: %w", name, errdefs.ErrNotFound)
	}
	if up {
		err = m.h.LinkSetUp(l)
	} else {
		err = m.h.LinkSetDown(l)
	}
	if err != nil {
		return fmt.Errorf("network: set %s up=%v: %w", name, up, err)
	}
	return nil
}

// AltTAPName is a second TAP name for instanceID, used while a running
// instance moves to a new VMM process: the old one still holds the first.
func AltTAPName(instanceID string) string {
	if len(instanceID) > tapIDChars-1 {
		instanceID = instanceID[:tapIDChars-1]
	}
	return TAPPrefix + instanceID + "_"
}
