package agentd

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

func TestShutdownSignalsInit(t *testing.T) {
	s := newTestServer(t)
	signalled := make(chan struct{}, 1)
	s.signalInit = func() error { signalled <- struct{}{}; return nil }
	sess := dial(t, s)
	if err := result(t, sess, proto.Request{Method: proto.MethodShutdown}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-signalled:
	default:
		t.Fatal("init was not signalled")
	}
}

// The real clock_settime would change the test host's clock (no namespace
// virtualizes CLOCK_REALTIME), so the clock is faked here; the lead's VM
// tests cover the real call.
func TestSetTime(t *testing.T) {
	s := newTestServer(t)
	var got int64
	s.setClock = func(ns int64) error { got = ns; return nil }
	sess := dial(t, s)
	want := time.Date(2030, 1, 1, 0, 0, 0, 5, time.UTC).UnixNano()
	if err := result(t, sess, proto.Request{Method: proto.MethodSetTime, TimeUnixNano: want}, nil); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("clock set to %d, want %d", got, want)
	}
	if err := result(t, sess, proto.Request{Method: proto.MethodSetTime}, nil); err == nil {
		t.Fatal("time 0 accepted")
	}
}

func TestAddEntropy(t *testing.T) {
	sess := dial(t, newTestServer(t))
	b := make([]byte, 64)
	rand.Read(b)
	if err := result(t, sess, proto.Request{Method: proto.MethodAddEntropy, Entropy: b}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestBench(t *testing.T) {
	sess := dial(t, newTestServer(t))
	const n = 3<<20 + 7
	st := open(t, sess, proto.Request{Method: proto.MethodBench, Bench: &proto.BenchRequest{Bytes: n}})
	var got int64
	for {
		typ, p, err := proto.ReadMsg(st, nil)
		if err != nil {
			t.Fatal(err)
		}
		if typ == proto.TypeEOF {
			break
		}
		got += int64(len(p))
	}
	if got != n {
		t.Fatalf("downloaded %d bytes", got)
	}
	st = open(t, sess, proto.Request{Method: proto.MethodBench, Bench: &proto.BenchRequest{Upload: true, Bytes: n}})
	chunk := make([]byte, 64<<10)
	for left := n; left > 0; left -= min(left, len(chunk)) {
		if err := proto.WriteMsg(st, proto.TypeData, chunk[:min(left, len(chunk))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := proto.ReadJSON(st, proto.TypeResult, nil); err != nil {
		t.Fatal(err)
	}
}

// inNamespaces runs fn on a thread of its own that first moves into new
// namespaces of the given kinds. The thread is never unlocked, so it ends
// with fn and no other goroutine runs in those namespaces.
func inNamespaces(t *testing.T, flags int, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(flags); err != nil {
			done <- errUnshare{err}
			return
		}
		done <- fn()
	}()
	err := <-done
	var u errUnshare
	if errors.As(err, &u) {
		t.Skipf("cannot make namespaces here (%v); the VM tests cover this call", u.err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

type errUnshare struct{ err error }

func (e errUnshare) Error() string { return "unshare: " + e.err.Error() }

// callHere runs one call in the calling thread and fails unless it
// answers with a Result.
func callHere(s *Server, req proto.Request) error {
	typ, p, err := handleHere(s, req)
	if err != nil {
		return err
	}
	return proto.DecodeFrame(typ, p, proto.TypeResult, nil)
}

func TestSetHostname(t *testing.T) {
	s := newTestServer(t)
	if err := os.WriteFile(s.hostnameFile, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	inNamespaces(t, unix.CLONE_NEWUTS, func() error {
		if err := callHere(s, proto.Request{Method: proto.MethodSetHostname, Hostname: "clone-7"}); err != nil {
			return err
		}
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return err
		}
		if got := unix.ByteSliceToString(u.Nodename[:]); got != "clone-7" {
			t.Errorf("hostname %q", got)
		}
		if err := callHere(s, proto.Request{Method: proto.MethodSetHostname}); err == nil {
			t.Error("empty hostname accepted")
		}
		return nil
	})
	if b, _ := os.ReadFile(s.hostnameFile); string(b) != "clone-7\n" {
		t.Fatalf("hostname file %q", b)
	}
	if got := envValue(s.baseEnv(), "HOSTNAME"); got != "clone-7" {
		t.Fatalf("HOSTNAME for execs = %q", got)
	}
}

func TestSetNetwork(t *testing.T) {
	s := newTestServer(t)
	oldMAC, _ := net.ParseMAC("02:00:00:00:00:01")
	newMAC, _ := net.ParseMAC("02:00:00:00:00:02")
	inNamespaces(t, unix.CLONE_NEWNET, func() error {
		peer, err := makeVeth(oldMAC)
		if err != nil {
			return err
		}
		arp, err := listenARP(peer.Attrs().Index)
		if err != nil {
			return err
		}
		defer unix.Close(arp)
		req := proto.NetworkRequest{OldMAC: oldMAC.String(), MAC: newMAC.String(), IP: "10.77.1.9", PrefixLen: 24,
			Gateway: "10.77.1.1", FlushNeighbors: true}
		if err := callHere(s, proto.Request{Method: proto.MethodSetNetwork, Network: &req}); err != nil {
			return err
		}
		return checkNetwork(t, newMAC, arp)
	})
}

// makeVeth makes eth0 (with mac and the old address 10.77.0.5/24) and its
// peer, both up, and returns the peer. The peer has a learned neighbour,
// which the flush must remove, and a permanent one, which it must keep
// (eth0 could not keep any: changing its MAC flushes its neighbours).
func makeVeth(mac net.HardwareAddr) (netlink.Link, error) {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", HardwareAddr: mac}, PeerName: "peer0"}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, err
	}
	eth0, err := netlink.LinkByName("eth0")
	if err != nil {
		return nil, err
	}
	peer, err := netlink.LinkByName("peer0")
	if err != nil {
		return nil, err
	}
	for _, l := range []netlink.Link{eth0, peer} {
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, err
		}
	}
	old, _ := netlink.ParseAddr("10.77.0.5/24")
	if err := netlink.AddrAdd(eth0, old); err != nil {
		return nil, err
	}
	for ip, state := range map[string]int{"10.77.0.7": netlink.NUD_STALE, "10.77.0.8": netlink.NUD_PERMANENT} {
		nb := &netlink.Neigh{LinkIndex: peer.Attrs().Index, Family: netlink.FAMILY_V4, State: state,
			IP: net.ParseIP(ip), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 7}}
		if err := netlink.NeighAdd(nb); err != nil {
			return nil, err
		}
	}
	return peer, nil
}

// listenARP opens a packet socket that receives the ARP frames reaching
// the link ifindex.
func listenARP(ifindex int) (int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	tv := unix.NsecToTimeval(int64(2 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func checkNetwork(t *testing.T, mac net.HardwareAddr, arp int) error {
	eth0, err := netlink.LinkByName("eth0")
	if err != nil {
		return err
	}
	if !bytes.Equal(eth0.Attrs().HardwareAddr, mac) || eth0.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("eth0 MAC %s flags %v", eth0.Attrs().HardwareAddr, eth0.Attrs().Flags)
	}
	addrs, err := netlink.AddrList(eth0, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.1.9/24" {
		t.Errorf("addresses %v", addrs)
	}
	routes, err := netlink.RouteList(eth0, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	var gw []string
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			gw = append(gw, r.Gw.String())
		}
	}
	if strings.Join(gw, ",") != "10.77.1.1" {
		t.Errorf("default routes via %v", gw)
	}
	neighs, err := netlink.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	var left []string
	for _, n := range neighs {
		left = append(left, n.IP.String())
	}
	if strings.Join(left, ",") != "10.77.0.8" {
		t.Errorf("neighbours after the flush: %v, want only the permanent 10.77.0.8", left)
	}
	return checkGratuitousARP(t, arp, mac)
}

// checkGratuitousARP reads frames until the announcement of 10.77.1.9 at mac.
func checkGratuitousARP(t *testing.T, fd int, mac net.HardwareAddr) error {
	buf := make([]byte, 1500)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			t.Errorf("no gratuitous ARP: %v", err)
			return nil
		}
		f := buf[:n]
		if n < 42 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_ARP {
			continue
		}
		sender, spa, tpa := f[22:28], net.IP(f[28:32]), net.IP(f[38:42])
		if bytes.Equal(sender, mac) && spa.Equal(net.IPv4(10, 77, 1, 9)) && tpa.Equal(spa) {
			return nil
		}
	}
}

func TestReadyEvent(t *testing.T) {
	// Raw descriptors: readyFile takes the write end over and closes it,
	// and an *os.File still holding it would close its number again when
	// collected, whatever it then belongs to.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	r := os.NewFile(uintptr(p[0]), "pipe")
	defer r.Close()
	f := readyFile(p[1])
	if f == nil {
		unix.Close(p[1])
		t.Fatal("an open pipe was not taken as the events port")
	}
	announceReady(f)
	var e struct {
		Type string    `json:"type"`
		Time time.Time `json:"time"`
	}
	if err := json.NewDecoder(r).Decode(&e); err != nil || e.Type != "agent_ready" || e.Time.IsZero() {
		t.Fatalf("event %+v %v", e, err)
	}
	const closed = 999_999 // above any descriptor this process has
	if readyFile(closed) != nil {
		t.Fatal("a closed descriptor was taken as the events port")
	}
}

func BenchmarkBenchDownload(b *testing.B) {
	sess := dial(b, New(Config{Dir: b.TempDir()}))
	const n = 16 << 20
	b.SetBytes(n)
	for b.Loop() {
		st, err := sess.OpenStream()
		if err != nil {
			b.Fatal(err)
		}
		if err := proto.WriteJSON(st, proto.TypeHeader, proto.Request{Method: proto.MethodBench, Bench: &proto.BenchRequest{Bytes: n}}); err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, chunkSize)
		for {
			typ, p, err := proto.ReadMsg(st, buf)
			if err != nil {
				b.Fatal(err)
			}
			buf = p
			if typ == proto.TypeEOF {
				break
			}
		}
		st.Close()
	}
}

// With no OldMAC the first Ethernet interface that is not loopback is the
// one configured.
func TestSetNetworkFirstInterface(t *testing.T) {
	s := newTestServer(t)
	inNamespaces(t, unix.CLONE_NEWNET, func() error {
		// A tap: this host's kernel may have no dummy driver.
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "tap0"}, Mode: netlink.TUNTAP_MODE_TAP}
		if err := netlink.LinkAdd(tap); err != nil {
			return err
		}
		req := proto.NetworkRequest{MAC: "02:00:00:00:00:09", IP: "10.78.0.2", PrefixLen: 16}
		if err := callHere(s, proto.Request{Method: proto.MethodSetNetwork, Network: &req}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("tap0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if l.Attrs().HardwareAddr.String() != req.MAC || len(addrs) != 1 || addrs[0].IPNet.String() != "10.78.0.2/16" {
			t.Errorf("tap0 MAC %s addresses %v", l.Attrs().HardwareAddr, addrs)
		}
		bad := proto.NetworkRequest{OldMAC: "02:00:00:00:00:42", IP: "10.78.0.3", PrefixLen: 16}
		if err := callHere(s, proto.Request{Method: proto.MethodSetNetwork, Network: &bad}); err == nil {
			t.Error("a missing interface was not an error")
		}
		return nil
	})
}

// A clone of a clone: the second set_network finds the interface by the
// MAC the first one gave it, without a lookup; a remembered interface that
// is gone is looked up again.
func TestSetNetworkAgainAndStaleKnownLink(t *testing.T) {
	s := newTestServer(t)
	macs := []string{"02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"}
	inNamespaces(t, unix.CLONE_NEWNET, func() error {
		first, _ := net.ParseMAC(macs[0])
		if _, err := makeVeth(first); err != nil {
			return err
		}
		s.rememberLink() // may pick peer0: then the first call looks eth0 up
		for i, ip := range []string{"10.77.1.9", "10.77.1.10"} {
			req := proto.NetworkRequest{OldMAC: macs[i], MAC: macs[i+1], IP: ip, PrefixLen: 24, Gateway: "10.77.1.1"}
			if err := callHere(s, proto.Request{Method: proto.MethodSetNetwork, Network: &req}); err != nil {
				return err
			}
		}
		// Forget the real index: the call must still find eth0 by MAC.
		s.setKnownLink(&knownLink{index: 999, name: "gone0", mac: s.known.mac})
		req := proto.NetworkRequest{OldMAC: macs[2], IP: "10.77.1.11", PrefixLen: 24}
		if err := callHere(s, proto.Request{Method: proto.MethodSetNetwork, Network: &req}); err != nil {
			return err
		}
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(eth0, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if eth0.Attrs().HardwareAddr.String() != macs[2] || len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.1.11/24" {
			t.Errorf("eth0 MAC %s addresses %v", eth0.Attrs().HardwareAddr, addrs)
		}
		if s.known.index != eth0.Attrs().Index {
			t.Errorf("known link %+v, eth0 is %d", s.known, eth0.Attrs().Index)
		}
		return nil
	})
}

// rememberLink, at the agent's start, finds the guest's one interface.
func TestRememberLink(t *testing.T) {
	s := newTestServer(t)
	inNamespaces(t, unix.CLONE_NEWNET, func() error {
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "tap0"}, Mode: netlink.TUNTAP_MODE_TAP}
		if err := netlink.LinkAdd(tap); err != nil {
			return err
		}
		l, err := netlink.LinkByName("tap0")
		if err != nil {
			return err
		}
		s.rememberLink()
		if s.known == nil || s.known.index != l.Attrs().Index || s.known.mac.String() != l.Attrs().HardwareAddr.String() {
			t.Errorf("remembered %+v, tap0 is %d %s", s.known, l.Attrs().Index, l.Attrs().HardwareAddr)
		}
		return nil
	})
}
