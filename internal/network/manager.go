package network

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Manager owns the bridge, the TAP devices and the address allocations of one
// network namespace. Its methods are safe for concurrent use. Close releases
// its netlink socket.
type Manager struct {
	cfg  Config
	sub  subnet
	log  *slog.Logger
	h    *netlink.Handle
	ns   netns.NsHandle // namespace to enter for TAP creation; closed handle = current
	pool *pool
}

// Option changes how New builds a Manager.
type Option func(*options)

type options struct {
	ns netns.NsHandle
}

// WithNetNS makes the Manager work in the network namespace ns instead of the
// current one. The Manager duplicates nothing: ns must stay open until Close.
// Tests use it with a namespace they created, so nothing touches the host's
// links.
func WithNetNS(ns netns.NsHandle) Option {
	return func(o *options) { o.ns = ns }
}

// New validates cfg (zero fields take their defaults) and returns a Manager
// with no allocations. It does not change the kernel; call EnsureBridge and
// Restore at startup.
func New(cfg Config, log *slog.Logger, opts ...Option) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	o := options{ns: netns.None()}
	for _, opt := range opts {
		opt(&o)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h, err := newHandle(o.ns)
	if err != nil {
		return nil, fmt.Errorf("network: open netlink: %w", err)
	}
	return &Manager{
		cfg:  cfg,
		sub:  newSubnet(cfg.Subnet),
		log:  log.With("component", "network", "bridge", cfg.BridgeName),
		h:    h,
		ns:   o.ns,
		pool: newPool(cfg.Subnet),
	}, nil
}

func newHandle(ns netns.NsHandle) (*netlink.Handle, error) {
	if ns.IsOpen() {
		return netlink.NewHandleAt(ns)
	}
	return netlink.NewHandle()
}

// Close releases the netlink socket. It leaves the bridge and the TAPs in
// place: they outlive the daemon so running VMs keep their network.
func (m *Manager) Close() error {
	m.h.Close()
	return nil
}

// BridgeName returns the name of the bridge.
func (m *Manager) BridgeName() string { return m.cfg.BridgeName }

// Subnet returns the guest subnet (masked).
func (m *Manager) Subnet() netip.Prefix { return m.cfg.Subnet }

// Gateway returns the bridge's address, the guests' default gateway.
func (m *Manager) Gateway() netip.Addr { return m.sub.gateway() }

// Allocate gives instanceID a free IP, MAC and TAP name and records them. If
// the instance already holds an allocation, Allocate returns it unchanged
// (Release first for a new identity). A full subnet is an error of class
// errdefs.ErrConflict with code "insufficient_resources"; an instance ID that
// is not lowercase alphanumeric is errdefs.ErrInvalidArgument.
func (m *Manager) Allocate(instanceID string) (Allocation, error) {
	a, err := m.pool.allocate(instanceID)
	if err == nil {
		m.log.Debug("allocated", "instance", instanceID, "ip", a.IP, "mac", a.MAC, "tap", a.TAP)
	}
	return a, err
}

// Reserve records a known allocation again, for example when an instance is
// restored from standby with the IP and MAC in its metadata. Prefix, Gateway
// and TAP may be left zero; if set they must match this network. Reserve
// replaces any allocation the instance held. It fails with errdefs.ErrConflict
// when another instance holds the IP, MAC or TAP name, and with
// errdefs.ErrFailedPrecondition when the IP is not a guest address of the
// subnet (the network was reconfigured).
func (m *Manager) Reserve(a Allocation) error {
	_, err := m.pool.reserve(a)
	return err
}

// Restore replaces all allocations with allocs: the IPs and MACs that running
// and standby instances keep, read from their metadata at daemon start.
// Entries that are invalid or conflict with an earlier entry are skipped and
// reported together in the returned error; the others are recorded.
func (m *Manager) Restore(allocs []Allocation) error {
	err := m.pool.restore(allocs)
	if err != nil {
		m.log.Warn("some allocations were not restored", "error", err)
	}
	return err
}

// Release frees the allocation of instanceID. Releasing an instance that holds
// none is a no-op. It does not delete the TAP; call DeleteTAP for that.
func (m *Manager) Release(instanceID string) {
	m.pool.release(instanceID)
}

// Lookup returns the allocation held by instanceID.
func (m *Manager) Lookup(instanceID string) (Allocation, bool) {
	return m.pool.lookup(instanceID)
}

// inNS runs fn on an OS thread that is in the Manager's namespace. Only code
// whose effect depends on the calling thread's namespace (opening
// /dev/net/tun) needs it; netlink requests go through m.h.
func (m *Manager) inNS(fn func() error) error {
	if !m.ns.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		// The goroutine owns a locked thread. If the thread cannot be put
		// back into its namespace it stays locked and the runtime discards
		// it when the goroutine exits, so no other goroutine runs there.
		runtime.LockOSThread()
		errc <- m.runInNS(fn)
	}()
	return <-errc
}

func (m *Manager) runInNS(fn func() error) error {
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("network: get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(m.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("network: enter netns: %w", err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("network: leave netns: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}
