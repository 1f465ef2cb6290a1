// Package network owns the host side of guest networking on Linux: one bridge
// with the gateway address, one persistent TAP device per running VM enslaved
// to that bridge, and the allocation of guest IPv4 addresses, MAC addresses and
// TAP names. It talks to the kernel only through netlink (vishvananda/netlink)
// and never runs or parses `ip`.
//
// # Namespace
//
// A Manager works in one network namespace. By default that is the namespace
// of the process when New is called (the daemon is started inside the
// namespace it should use). WithNetNS makes it work in another namespace: all
// netlink requests go through a handle bound to that namespace, and TAP
// creation, which opens /dev/net/tun and therefore creates the device in the
// namespace of the calling thread, runs on a locked OS thread that has entered
// the namespace. A bare *netlink.Handle is not enough for that, which is why
// the option takes the namespace itself.
//
// # Bridge
//
// Config.BridgeName (default "hmbr0") is the bridge; the gateway is the first
// usable address of Config.Subnet (default 10.100.0.0/16, gateway
// 10.100.0.1/16). EnsureBridge creates the bridge if it is missing, assigns the
// gateway address, removes any other IPv4 address from the bridge (left over
// from an earlier subnet) and brings it up. It is idempotent. It refuses, with
// an error of class errdefs.ErrFailedPrecondition, when the subnet overlaps an
// IPv4 address or a main-table route of any other link in the namespace (a
// default route does not count). A bridge created here gets a fixed, locally
// administered MAC, so the kernel does not change the bridge's MAC as TAPs
// come and go.
//
// # Allocation
//
// Allocation state is derived, not stored: the instances package persists each
// instance's IP and MAC in its own metadata and, at daemon start, hands the
// allocations still in use (running and standby instances) to Restore. After
// that:
//
//   - Allocate picks a free address (never the network, gateway or broadcast
//     address; a random start, then a scan), a free locally administered
//     unicast MAC 02:xx:xx:xx:xx:xx, and the TAP name TAPName(id) = "hm" + the
//     first 13 characters of the instance ID (15 bytes, IFNAMSIZ-1). When the
//     subnet is full it returns errdefs.ErrConflict with code
//     "insufficient_resources".
//   - Reserve takes a known allocation again (restore from standby keeps its
//     IP and MAC).
//   - Release frees an instance's allocation.
//
// Allocation methods are safe for concurrent use; they never touch the kernel.
//
// # TAP devices
//
// CreateTAP makes a persistent TAP (mode tap, IFF_NO_PI|IFF_VNET_HDR, single
// queue, owned by the daemon's effective uid and gid) that QEMU opens later by
// name with `-netdev tap,ifname=<tap>,script=no,downscript=no`; it is
// enslaved to the bridge and set up. An existing TAP of that name is reused;
// a link of that name that is not a single-queue TAP is replaced. DeleteTAP
// removes a TAP (missing is not an error). ListTAPs lists the TAPs this package
// made (tuntap links whose name starts with "hm"), and CleanupOrphans deletes
// the ones not in a keep set, for the daemon's startup. TAPStats reads a TAP's
// byte counters.
//
// This package must not import the instance, vmm or api packages.
package network
