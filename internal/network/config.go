package network

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// Defaults used for zero fields of Config.
const (
	DefaultBridgeName = "hmbr0"
	defaultSubnet     = "10.100.0.0/16"
)

// DefaultSubnet is the guest subnet used when Config.Subnet is the zero value.
var DefaultSubnet = netip.MustParsePrefix(defaultSubnet)

// maxIfName is the longest interface name the kernel accepts (IFNAMSIZ-1).
const maxIfName = 15

// Config describes the guest network. The zero value is usable: it means the
// bridge "hmbr0" with the subnet 10.100.0.0/16.
type Config struct {
	// BridgeName is the bridge every TAP is enslaved to. Default "hmbr0".
	BridgeName string
	// Subnet is the IPv4 subnet guests get addresses from. Host bits are
	// ignored (10.100.0.1/16 means 10.100.0.0/16). It must be /30 or larger.
	// The gateway, assigned to the bridge, is its first usable address.
	// Default 10.100.0.0/16.
	Subnet netip.Prefix
}

// withDefaults returns c with zero fields filled in and the subnet masked, or
// an error of class errdefs.ErrInvalidArgument.
func (c Config) withDefaults() (Config, error) {
	if c.BridgeName == "" {
		c.BridgeName = DefaultBridgeName
	}
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	if err := validIfName(c.BridgeName); err != nil {
		return c, fmt.Errorf("network: bridge name: %w", err)
	}
	if !c.Subnet.Addr().Is4() {
		return c, fmt.Errorf("network: subnet %s is not IPv4: %w", c.Subnet, errdefs.ErrInvalidArgument)
	}
	if c.Subnet.Bits() > 30 {
		return c, fmt.Errorf("network: subnet %s is smaller than /30: %w", c.Subnet, errdefs.ErrInvalidArgument)
	}
	c.Subnet = c.Subnet.Masked()
	return c, nil
}

// validIfName reports whether name is a legal Linux interface name.
func validIfName(name string) error {
	if name == "" || len(name) > maxIfName {
		return fmt.Errorf("%q must be 1 to %d bytes: %w", name, maxIfName, errdefs.ErrInvalidArgument)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("%q is not a valid interface name: %w", name, errdefs.ErrInvalidArgument)
	}
	return nil
}

// subnet is the arithmetic of an IPv4 prefix: offsets from the network
// address. Offset 0 is the network address, 1 the gateway and size-1 the
// broadcast address; guests get offsets 2 to size-2.
type subnet struct {
	prefix netip.Prefix
	base   uint32
	size   uint32 // number of addresses, 4 to 2^31
}

func newSubnet(p netip.Prefix) subnet {
	a := p.Masked().Addr().As4()
	base := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	return subnet{prefix: p.Masked(), base: base, size: uint32(1) << (32 - p.Bits())}
}

func (s subnet) addr(off uint32) netip.Addr {
	v := s.base + off
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// offset returns a's offset in s, and false when a is not in s.
func (s subnet) offset(a netip.Addr) (uint32, bool) {
	if !a.Is4() || !s.prefix.Contains(a) {
		return 0, false
	}
	b := a.As4()
	return (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) - s.base, true
}

func (s subnet) gateway() netip.Addr { return s.addr(1) }

// firstGuest and lastGuest bound the offsets a guest may get.
func (s subnet) firstGuest() uint32 { return 2 }
func (s subnet) lastGuest() uint32  { return s.size - 2 }

// guestUsable reports whether a may be given to a guest.
func (s subnet) guestUsable(a netip.Addr) bool {
	off, ok := s.offset(a)
	return ok && off >= s.firstGuest() && off <= s.lastGuest()
}
