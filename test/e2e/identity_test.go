package e2e

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hypeman-vm/hypeman/internal/agent"
	"github.com/hypeman-vm/hypeman/internal/agent/proto"
	"github.com/hypeman-vm/hypeman/internal/guest/events"
	"github.com/hypeman-vm/hypeman/internal/guest/vmconfig"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
	"github.com/hypeman-vm/hypeman/internal/hypervisor/qemu"
)

// TestIdentityCalls exercises the agent calls fork will use, on a real
// VM: new MAC and address (reachable at the new one, not the old), new
// hostname, clock stepped, entropy added.
func TestIdentityCalls(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("/tmp", "hmid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killQEMUs(dir); os.RemoveAll(dir) })

	// A bridge and a TAP of the test's own, in the test namespace.
	br, tap := "hmidbr", "hmidtap0"
	for _, args := range [][]string{
		{"link", "add", br, "type", "bridge"}, {"addr", "add", "10.251.0.1/24", "dev", br}, {"link", "set", br, "up"},
		{"tuntap", "add", tap, "mode", "tap", "vnet_hdr"}, {"link", "set", tap, "master", br}, {"link", "set", tap, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", tap).Run(); exec.Command("ip", "link", "del", br).Run() })

	spec := bareSpec(t, d, img, dir, "id")
	cfg, _ := vmconfig.Encode(vmconfig.Config{
		InstanceID: "id", Hostname: "before", StopTimeoutSeconds: 1, Env: []string{"PATH=/bin"},
		Entrypoint: []string{"/bin/sh", "-c", "exec httpd -f -p 80 -h /www"},
		Network:    &vmconfig.Network{MAC: "02:00:00:aa:00:01", IP: "10.251.0.2", PrefixLen: 24, Gateway: "10.251.0.1"},
	})
	os.WriteFile(filepath.Join(dir, "id-config.img"), cfg, 0o644)
	spec.NICs = []hypervisor.NIC{{TAP: tap, MAC: "02:00:00:aa:00:01"}}
	vm, err := qemu.New(qemu.Config{Accel: "tcg"}, nil).Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Kill(); vm.Wait(context.Background()) })
	waitEvents(t, filepath.Join(dir, "events.log"), func(s events.Summary) bool { return s.ProgramStarted && s.AgentReady })
	c := agent.New(agent.UnixDialer(filepath.Join(dir, "id-agent.sock")), nil)
	defer c.Close()
	if _, err := httpGet("http://10.251.0.2/", 60*time.Second); err != nil {
		t.Fatalf("guest unreachable at its first address: %v", err)
	}

	t.Run("network", func(t *testing.T) {
		err := c.SetNetwork(ctx, proto.NetworkRequest{OldMAC: "02:00:00:aa:00:01", MAC: "02:00:00:aa:00:02",
			IP: "10.251.0.3", PrefixLen: 24, Gateway: "10.251.0.1", FlushNeighbors: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := httpGet("http://10.251.0.3/", 60*time.Second); err != nil {
			t.Fatalf("guest unreachable at its new address: %v", err)
		}
		if out, _ := execOut(t, ctx, c, "/bin/sh", "-c", "cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0"); !strings.Contains(out, "02:00:00:aa:00:02") ||
			!strings.Contains(out, "10.251.0.3/24") || strings.Contains(out, "10.251.0.2/") {
			t.Fatalf("guest interface after set_network:\n%s", out)
		}
		if _, err := httpGet("http://10.251.0.2/", 3*time.Second); err == nil {
			t.Fatal("the old address still answers")
		}
	})
	t.Run("hostname", func(t *testing.T) {
		if err := c.SetHostname(ctx, "after"); err != nil {
			t.Fatal(err)
		}
		if out, _ := execOut(t, ctx, c, "hostname"); out != "after\n" {
			t.Fatalf("hostname = %q", out)
		}
	})
	t.Run("clock", func(t *testing.T) {
		skewed := time.Now().Add(1000 * time.Hour)
		if err := c.SetTime(ctx, skewed); err != nil {
			t.Fatal(err)
		}
		out, _ := execOut(t, ctx, c, "date", "+%s")
		got, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
		if d := got - skewed.Unix(); d < -5 || d > 60 {
			t.Fatalf("guest clock %d, want about %d", got, skewed.Unix())
		}
		if err := c.SetTime(ctx, time.Now()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("entropy", func(t *testing.T) {
		b := make([]byte, 64)
		rand.Read(b)
		if err := c.AddEntropy(ctx, b); err != nil {
			t.Fatal(err)
		}
		if out, code := execOut(t, ctx, c, "cat", "/proc/sys/kernel/random/entropy_avail"); code != 0 || strings.TrimSpace(out) == "0" {
			t.Fatalf("entropy_avail after add_entropy: %q", out)
		}
	})
}
