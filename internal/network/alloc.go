package network

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// TAPPrefix starts the name of every TAP device this package creates.
const TAPPrefix = "hm"

// tapIDChars is how many characters of the instance ID go into a TAP name:
// len("hm") + 13 = 15 bytes, the kernel's limit.
const tapIDChars = maxIfName - len(TAPPrefix)

// macTries bounds the random draws for a free MAC. With 40 random bits a
// collision is already unlikely; running out means something is wrong.
const macTries = 64

// Allocation is one instance's network identity. IP and MAC are what the guest
// configures (the instances package persists them in its metadata); TAP is the
// host device QEMU attaches to.
type Allocation struct {
	InstanceID string     `json:"instance_id"`
	IP         netip.Addr `json:"ip"`
	Prefix     int        `json:"prefix"`  // prefix length of the subnet, e.g. 16
	Gateway    netip.Addr `json:"gateway"` // the bridge's address
	// MAC is the guest's MAC in canonical form, lowercase "02:xx:xx:xx:xx:xx".
	MAC string `json:"mac"`
	TAP string `json:"tap"`
}

// TAPName returns the TAP device name of an instance: "hm" followed by the
// first 13 characters of its ID. Instance IDs are 24-character CUID2 strings,
// so the names are unique in practice; Allocate and Reserve still refuse a
// name that another instance holds.
func TAPName(instanceID string) string {
	if len(instanceID) > tapIDChars {
		instanceID = instanceID[:tapIDChars]
	}
	return TAPPrefix + instanceID
}

// validID checks that id is non-empty lowercase alphanumeric, so TAPName(id)
// is a valid interface name.
func validID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("network: instance ID %q must be 1 to 64 characters: %w", id, errdefs.ErrInvalidArgument)
	}
	for _, c := range id {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return fmt.Errorf("network: instance ID %q must be lowercase alphanumeric: %w", id, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// pool hands out IPs, MACs and TAP names in one subnet. It never touches the
// kernel. All methods are safe for concurrent use.
type pool struct {
	sub    subnet
	newMAC func() net.HardwareAddr // randomMAC; tests replace it

	mu   sync.Mutex
	byID map[string]Allocation // guarded by mu
	ips  map[netip.Addr]string // guarded by mu; IP -> instance ID
	macs map[string]string     // guarded by mu; MAC -> instance ID ("" for host MACs)
	taps map[string]string     // guarded by mu; TAP name -> instance ID
}

func newPool(p netip.Prefix) *pool {
	pl := &pool{sub: newSubnet(p), newMAC: randomMAC}
	pl.resetLocked()
	return pl
}

func (p *pool) resetLocked() {
	p.byID = make(map[string]Allocation)
	p.ips = make(map[netip.Addr]string)
	p.taps = make(map[string]string)
	hostMACs := make(map[string]string)
	for mac, id := range p.macs {
		if id == "" {
			hostMACs[mac] = ""
		}
	}
	p.macs = hostMACs
}

// allocate implements Manager.Allocate.
func (p *pool) allocate(id string) (Allocation, error) {
	if err := validID(id); err != nil {
		return Allocation{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if a, ok := p.byID[id]; ok {
		return a, nil
	}
	tap := TAPName(id)
	if owner, ok := p.taps[tap]; ok {
		return Allocation{}, fmt.Errorf("network: TAP name %s of instance %s is held by instance %s: %w", tap, id, owner, errdefs.ErrConflict)
	}
	ip, ok := p.freeIPLocked()
	if !ok {
		return Allocation{}, errdefs.Newf(errdefs.ErrConflict, "insufficient_resources", "no free IP address in %s", p.sub.prefix)
	}
	mac, err := p.freeMACLocked()
	if err != nil {
		return Allocation{}, err
	}
	a := p.complete(Allocation{InstanceID: id, IP: ip, MAC: mac, TAP: tap})
	p.storeLocked(a)
	return a, nil
}

// freeIPLocked scans the guest range from a random offset and returns the
// first address no instance holds. The random start spreads instances over
// the subnet, which makes moving standby instances between hosts less likely
// to collide.
func (p *pool) freeIPLocked() (netip.Addr, bool) {
	first, last := p.sub.firstGuest(), p.sub.lastGuest()
	n := last - first + 1
	start := rand.Uint32N(n)
	for i := range n {
		a := p.sub.addr(first + (start+i)%n)
		if _, used := p.ips[a]; !used {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// freeMACLocked draws locally administered unicast MACs until it finds one no
// instance (and not the bridge) uses.
func (p *pool) freeMACLocked() (string, error) {
	for range macTries {
		mac := p.newMAC().String()
		if _, used := p.macs[mac]; !used {
			return mac, nil
		}
	}
	return "", fmt.Errorf("network: no free MAC address after %d tries: %w", macTries, errdefs.ErrInternal)
}

// randomMAC returns 02:xx:xx:xx:xx:xx: locally administered, unicast.
func randomMAC() net.HardwareAddr {
	v := rand.Uint64()
	return net.HardwareAddr{0x02, byte(v >> 32), byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

// complete fills Prefix and Gateway from the subnet.
func (p *pool) complete(a Allocation) Allocation {
	a.Prefix = p.sub.prefix.Bits()
	a.Gateway = p.sub.gateway()
	return a
}

func (p *pool) storeLocked(a Allocation) {
	p.byID[a.InstanceID] = a
	p.ips[a.IP] = a.InstanceID
	p.macs[a.MAC] = a.InstanceID
	p.taps[a.TAP] = a.InstanceID
}

func (p *pool) removeLocked(id string) {
	a, ok := p.byID[id]
	if !ok {
		return
	}
	delete(p.byID, id)
	delete(p.ips, a.IP)
	delete(p.macs, a.MAC)
	delete(p.taps, a.TAP)
}

// reserve implements Manager.Reserve.
func (p *pool) reserve(a Allocation) (Allocation, error) {
	a, err := p.normalize(a)
	if err != nil {
		return Allocation{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.conflictLocked(a); err != nil {
		return Allocation{}, err
	}
	p.removeLocked(a.InstanceID)
	p.storeLocked(a)
	return a, nil
}

// restore implements Manager.Restore.
func (p *pool) restore(allocs []Allocation) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resetLocked()
	var errs []error
	for _, a := range allocs {
		n, err := p.normalize(a)
		if err == nil {
			err = p.conflictLocked(n)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", a.InstanceID, err))
			continue
		}
		p.removeLocked(n.InstanceID)
		p.storeLocked(n)
	}
	return errors.Join(errs...)
}

// normalize validates a known allocation and fills its derived fields.
func (p *pool) normalize(a Allocation) (Allocation, error) {
	if err := validID(a.InstanceID); err != nil {
		return a, err
	}
	if a.TAP == "" {
		a.TAP = TAPName(a.InstanceID)
	}
	if a.TAP != TAPName(a.InstanceID) && a.TAP != AltTAPName(a.InstanceID) {
		return a, fmt.Errorf("network: TAP %q of instance %s is not %q or %q: %w", a.TAP, a.InstanceID,
			TAPName(a.InstanceID), AltTAPName(a.InstanceID), errdefs.ErrInvalidArgument)
	}
	mac, err := net.ParseMAC(a.MAC)
	if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
		return a, fmt.Errorf("network: MAC %q of instance %s is not a unicast Ethernet address: %w", a.MAC, a.InstanceID, errdefs.ErrInvalidArgument)
	}
	a.MAC = mac.String()
	if !p.sub.guestUsable(a.IP) {
		return a, fmt.Errorf("network: IP %s of instance %s is not a guest address of %s: %w", a.IP, a.InstanceID, p.sub.prefix, errdefs.ErrFailedPrecondition)
	}
	if (a.Prefix != 0 && a.Prefix != p.sub.prefix.Bits()) || (a.Gateway.IsValid() && a.Gateway != p.sub.gateway()) {
		return a, fmt.Errorf("network: instance %s has prefix /%d and gateway %s, but the network is %s with gateway %s: %w",
			a.InstanceID, a.Prefix, a.Gateway, p.sub.prefix, p.sub.gateway(), errdefs.ErrFailedPrecondition)
	}
	return p.complete(a), nil
}

// conflictLocked reports whether an instance other than a.InstanceID holds
// a's IP, MAC or TAP name.
func (p *pool) conflictLocked(a Allocation) error {
	if owner, ok := p.ips[a.IP]; ok && owner != a.InstanceID {
		return fmt.Errorf("network: IP %s is held by instance %s: %w", a.IP, owner, errdefs.ErrConflict)
	}
	if owner, ok := p.macs[a.MAC]; ok && owner != a.InstanceID {
		if owner == "" {
			owner = "the host"
		} else {
			owner = "instance " + owner
		}
		return fmt.Errorf("network: MAC %s is held by %s: %w", a.MAC, owner, errdefs.ErrConflict)
	}
	if owner, ok := p.taps[a.TAP]; ok && owner != a.InstanceID {
		return fmt.Errorf("network: TAP name %s is held by instance %s: %w", a.TAP, owner, errdefs.ErrConflict)
	}
	return nil
}

// release implements Manager.Release.
func (p *pool) release(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removeLocked(id)
}

// lookup implements Manager.Lookup.
func (p *pool) lookup(id string) (Allocation, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, ok := p.byID[id]
	return a, ok
}

// reserveHostMAC keeps mac (the bridge's own MAC) from ever going to a guest.
// It is a no-op when an instance already holds mac.
func (p *pool) reserveHostMAC(mac net.HardwareAddr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.macs[mac.String()]; !ok {
		p.macs[mac.String()] = ""
	}
}
