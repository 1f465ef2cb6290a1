package e2e

import (
	"context"
	"os"
	"path/filepath"
	"sort"
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
	"github.com/hypeman-vm/hypeman/internal/storage"
)

// TestAgentChannelSurvivesSnapshotRestore works directly at the hypervisor
// layer: it boots a VM with the guest agent, saves its state, ends the
// QEMU process, restores the state into a new QEMU process whose sockets
// have other paths, and checks that the agent answers there (a new
// session over the same guest port) and the guest kept its memory.
func TestAgentChannelSurvivesSnapshotRestore(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	dir, err := os.MkdirTemp("/tmp", "hmsnap-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killQEMUs(dir); os.RemoveAll(dir) })
	spec := bareSpec(t, d, img, dir, "a")
	q := qemu.New(qemu.Config{Accel: "tcg"}, nil)
	vm, err := q.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Kill(); vm.Wait(context.Background()) })
	waitEvents(t, filepath.Join(dir, "events.log"), func(s events.Summary) bool { return s.ProgramStarted && s.AgentReady })

	c1 := agent.New(agent.UnixDialer(filepath.Join(dir, "a-agent.sock")), nil)
	defer c1.Close()
	for i := 0; i < 100; i++ { // the program writes its first count soon after it starts
		if out, code := execOut(t, ctx, c1, "cat", "/tmp/counter"); code == 0 && strings.TrimSpace(out) != "" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := counter(t, ctx, c1)

	snap := vm.(hypervisor.Snapshotter)
	if err := snap.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	if err := snap.SaveState(ctx, state); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(state); err != nil || fi.Size() > 8<<20 {
		t.Fatalf("state file %v %v: device state only, RAM stays in the memory file", fi, err)
	}
	vm.Kill()
	vm.Wait(ctx)

	spec2 := bareSpec(t, d, img, dir, "b")
	spec2.MemoryFile = spec.MemoryFile // the same RAM, restored
	spec2.Disks = spec.Disks
	vm2, err := q.Restore(ctx, spec2, state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm2.Kill(); vm2.Wait(context.Background()) })
	if err := vm2.(hypervisor.Snapshotter).Resume(ctx); err != nil {
		t.Fatal(err)
	}
	c2 := agent.New(agent.UnixDialer(filepath.Join(dir, "b-agent.sock")), nil)
	after := counter(t, ctx, c2)
	if after < before {
		t.Fatalf("guest counter went back from %d to %d: memory was not restored", before, after)
	}
	time.Sleep(1500 * time.Millisecond)
	if later := counter(t, ctx, c2); later <= after {
		t.Fatalf("guest counter stuck at %d after restore", later)
	}
	// The host side reconnects (a daemon restart): a new session again.
	c2.Close()
	c3 := agent.New(agent.UnixDialer(filepath.Join(dir, "b-agent.sock")), nil)
	defer c3.Close()
	if err := c3.Ping(ctx); err != nil {
		t.Fatalf("agent after reconnecting: %v", err)
	}
}

// counter reads the guest program's counter through an exec. The program
// rewrites the file continually, so a read can catch it empty: retry.
func counter(t *testing.T, ctx context.Context, c *agent.Client) int {
	t.Helper()
	var out string
	var code int
	for i := 0; i < 20; i++ {
		out, code = execOut(t, ctx, c, "cat", "/tmp/counter")
		if n, err := strconv.Atoi(strings.TrimSpace(out)); code == 0 && err == nil {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("cat /tmp/counter: %q exit %d", out, code)
	return 0
}

func execOut(t *testing.T, ctx context.Context, c *agent.Client, cmd ...string) (string, int) {
	t.Helper()
	ectx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	e, err := c.Exec(ectx, proto.ExecRequest{Command: cmd})
	if err != nil {
		t.Fatalf("exec %v: %v", cmd, err)
	}
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := e.Output.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	code, err := e.Wait(ectx)
	if err != nil {
		t.Fatalf("exec %v: %v", cmd, err)
	}
	return b.String(), code
}

// bareSpec describes a VM of the demo image without the daemon: boot
// files from the shared daemon's data dir, fresh disks in dir, file names
// prefixed with tag.
func bareSpec(t *testing.T, d *daemon, img, dir, tag string) hypervisor.Spec {
	t.Helper()
	var im struct{ Digest string }
	if st, raw := d.do("GET", "/images/"+escapeRef(img), nil, &im); st != 200 {
		t.Fatalf("image: %d %s", st, raw)
	}
	rootfs := filepath.Join(d.dataDir, "images", "digests", strings.TrimPrefix(im.Digest, "sha256:"), "rootfs.erofs")
	initrds, _ := filepath.Glob(filepath.Join(d.dataDir, "system", "initrd", "*.cpio"))
	sort.Slice(initrds, func(i, j int) bool { return modTime(initrds[i]).After(modTime(initrds[j])) })
	if len(initrds) == 0 {
		t.Fatal("no initrd in the shared daemon's data dir")
	}
	p := func(name string) string { return filepath.Join(dir, tag+"-"+name) }
	overlay := p("overlay.qcow2")
	if err := storage.New(filepath.Join(dir, "templates")).CreateOverlay(context.Background(), overlay, 1<<30); err != nil {
		t.Fatal(err)
	}
	cfg, _ := vmconfig.Encode(vmconfig.Config{
		InstanceID: "snap", Hostname: "snap", StopTimeoutSeconds: 1,
		Entrypoint: []string{"/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done"},
		Env:        []string{"PATH=/bin"},
	})
	if err := os.WriteFile(p("config.img"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := storage.CreateMemoryFile(p("mem"), 256<<20); err != nil {
		t.Fatal(err)
	}
	events := filepath.Join(dir, "events.log")
	if _, err := os.Stat(events); os.IsNotExist(err) {
		os.WriteFile(events, nil, 0o644)
	}
	return hypervisor.Spec{
		Name: "snap-" + tag, VCPUs: 1, MemoryBytes: 256 << 20, MemoryFile: p("mem"),
		Kernel: os.Getenv(envKernel), Initrd: initrds[0], Cmdline: "console=ttyS0 panic=-1 quiet loglevel=3",
		Disks: []hypervisor.Disk{
			{Path: rootfs, Format: hypervisor.FormatRaw, ReadOnly: true, Serial: vmconfig.SerialRootfs},
			{Path: overlay, Format: hypervisor.FormatQCOW2, Serial: vmconfig.SerialOverlay},
			{Path: p("config.img"), Format: hypervisor.FormatRaw, ReadOnly: true, Serial: vmconfig.SerialConfig},
		},
		ConsoleLog: p("console.log"),
		Ports: []hypervisor.Port{
			{Name: vmconfig.PortEvents, Kind: hypervisor.PortFile, Path: events},
			{Name: vmconfig.PortAgent, Kind: hypervisor.PortSocket, Path: p("agent.sock")},
		},
		ControlSocket: p("qmp.sock"), PIDFile: p("qemu.pid"), VMMLog: p("vmm.log"), Accel: "tcg",
	}
}

func modTime(p string) time.Time {
	fi, err := os.Stat(p)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

func waitEvents(t *testing.T, path string, ok func(events.Summary) bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if s, err := events.ParseFile(path); err == nil && ok(s) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	t.Fatalf("guest events never reached the expected state:\n%s", b)
}
