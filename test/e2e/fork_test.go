package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// counterScript counts in /tmp/counter (guest memory state a restore must
// keep), writes a file on the overlay disk, and serves HTTP: /www/who is
// served, so each instance answers with its own identity file.
const counterScript = "echo source > /www/who; echo kept > /var/data.txt; " +
	"(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done) & exec httpd -f -p 80 -h /www"

func guestCounter(t *testing.T, d *daemon, id string) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		out, code := wsExec(t, d, id, sh("cat /tmp/counter"), nil, nil)
		if n, err := strconv.Atoi(strings.TrimSpace(out)); code == 0 && err == nil {
			return n
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("no counter in %s", id)
	return 0
}

func guestOut(t *testing.T, d *daemon, id, script string) string {
	t.Helper()
	out, code := wsExec(t, d, id, sh(script), nil, nil)
	if code != 0 {
		t.Fatalf("exec %q in %s: exit %d: %s", script, id, code, out)
	}
	return out
}

func post(t *testing.T, d *daemon, path string, body any, want int) instance {
	t.Helper()
	var in instance
	if st, raw := d.do("POST", path, body, &in); st != want {
		t.Fatalf("POST %s: %d %s, want %d\n%s", path, st, raw, want, d.log())
	}
	return in
}

// TestStandbyRestore: the program's memory (a counter), a file on the
// overlay disk and a TCP listener all survive standby and restore; the
// address stays; the clock is stepped to the host's time.
func TestStandbyRestore(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	in := create(t, d, map[string]any{"name": "standby", "image": img, "entrypoint": []string{"/bin/sh", "-c", counterScript}})
	in = waitState(t, d, in.ID, "Running")
	before := guestCounter(t, d, in.ID)

	sb := post(t, d, "/instances/"+in.ID+"/standby", map[string]any{}, 200)
	if sb.State != "Standby" || sb.HasSnapshot == nil || !*sb.HasSnapshot || qemuRunning(in.ID) {
		t.Fatalf("after standby: %+v (QEMU %v)", sb, qemuRunning(in.ID))
	}
	// The TAP is deleted right after the answer (a device's deletion
	// waits for the kernel's grace periods), before any other operation
	// on the instance runs.
	if !eventually(2*time.Second, func() bool { return !tapExists(tapName(in.ID)) }) {
		t.Fatalf("TAP %s still there 2 s after standby", tapName(in.ID))
	}
	if st, raw := d.do("POST", "/instances/"+in.ID+"/standby", map[string]any{}, nil); st != 409 || !strings.Contains(string(raw), "invalid_state") {
		t.Fatalf("standby of a Standby instance: %d %s", st, raw)
	}
	time.Sleep(2 * time.Second) // the guest clock must be stepped over this gap

	r := post(t, d, "/instances/"+in.ID+"/restore", nil, 200)
	if r.State != "Running" || r.Network.IP != in.Network.IP || r.Network.MAC != in.Network.MAC || (r.HasSnapshot != nil && *r.HasSnapshot) {
		t.Fatalf("after restore: %+v, want Running at %s %s", r, in.Network.IP, in.Network.MAC)
	}
	if after := guestCounter(t, d, in.ID); after < before {
		t.Fatalf("counter %d after restore, was %d: guest memory lost", after, before)
	}
	if out := guestOut(t, d, in.ID, "cat /var/data.txt"); out != "kept\n" {
		t.Fatalf("overlay file after restore: %q", out)
	}
	if body, err := httpGet("http://"+in.Network.IP+"/who", 30*time.Second); err != nil || body != "source\n" {
		t.Fatalf("the listener after restore: %q %v", body, err)
	}
	guestNow, _ := strconv.ParseInt(strings.TrimSpace(guestOut(t, d, in.ID, "date +%s")), 10, 64)
	if diff := guestNow - time.Now().Unix(); diff < -5 || diff > 5 {
		t.Fatalf("guest clock off by %d s after restore", diff)
	}
	if st, _ := d.do("POST", "/instances/"+in.ID+"/restore", nil, nil); st != 409 {
		t.Fatalf("restore of a Running instance: %d", st)
	}
}

// TestRestoreRefusesDamagedSnapshot: a truncated memory file is refused
// with a message saying so, and the instance stays in Standby.
func TestRestoreRefusesDamagedSnapshot(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	in := create(t, d, map[string]any{"name": "damaged", "image": img})
	waitState(t, d, in.ID, "Running")
	post(t, d, "/instances/"+in.ID+"/standby", nil, 200)
	mem := d.dataDir + "/instances/" + in.ID + "/mem"
	if err := os.Truncate(mem, 4096); err != nil {
		t.Fatal(err)
	}
	var e apiError
	st, raw := d.do("POST", "/instances/"+in.ID+"/restore", nil, &e)
	if st != 409 || e.Code != "snapshot_damaged" || !strings.Contains(e.Message, "truncated") {
		t.Fatalf("restore of a truncated snapshot: %d %s", st, raw)
	}
	if got := get(t, d, in.ID); got.State != "Standby" || qemuRunning(in.ID) {
		t.Fatalf("after the refused restore: %s, QEMU %v", got.State, qemuRunning(in.ID))
	}
}

// TestFork covers fork from Running (with and without from_running),
// Standby and Stopped, every target state, and a fork of a fork; each
// fork is independent and has its own identity; deleting the source leaves
// the forks working.
func TestFork(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	src := create(t, d, map[string]any{"name": "fork-src", "image": img, "entrypoint": []string{"/bin/sh", "-c", counterScript}})
	src = waitState(t, d, src.ID, "Running")
	guestCounter(t, d, src.ID)

	var e apiError
	if st, _ := d.do("POST", "/instances/"+src.ID+"/fork", map[string]any{"name": "nope"}, &e); st != 409 || e.Code != "invalid_state" {
		t.Fatalf("fork of Running without from_running: %d %+v", st, e)
	}
	for _, tc := range []struct {
		body map[string]any
		st   int
		code string
	}{
		{map[string]any{"name": "Bad_Name", "from_running": true}, 400, ""},
		{map[string]any{"name": "x", "from_running": true, "target_state": "Paused"}, 400, ""},
		{map[string]any{"name": "fork-src", "from_running": true}, 409, "name_conflict"},
	} {
		if st, raw := d.do("POST", "/instances/"+src.ID+"/fork", tc.body, &e); st != tc.st || (tc.code != "" && e.Code != tc.code) {
			t.Fatalf("fork %v: %d %s", tc.body, st, raw)
		}
	}

	// From Running: the source keeps running; the fork is Running by default.
	f1 := post(t, d, "/instances/"+src.ID+"/fork", map[string]any{"name": "fork-run", "from_running": true}, 201)
	t.Cleanup(func() { d.do("DELETE", "/instances/"+f1.ID+"?graceful_shutdown=false", nil, nil) })
	if f1.State != "Running" || get(t, d, src.ID).State != "Running" {
		t.Fatalf("after fork from Running: fork %s, source %s", f1.State, get(t, d, src.ID).State)
	}
	checkIndependent(t, d, src, f1)

	// From Running, the other targets.
	f1s := post(t, d, "/instances/"+src.ID+"/fork", map[string]any{"name": "fork-run-standby", "from_running": true, "target_state": "Standby"}, 201)
	t.Cleanup(func() { d.do("DELETE", "/instances/"+f1s.ID+"?graceful_shutdown=false", nil, nil) })
	f1t := post(t, d, "/instances/"+src.ID+"/fork", map[string]any{"name": "fork-run-stopped", "from_running": true, "target_state": "Stopped"}, 201)
	t.Cleanup(func() { d.do("DELETE", "/instances/"+f1t.ID+"?graceful_shutdown=false", nil, nil) })
	if f1s.State != "Standby" || f1t.State != "Stopped" || get(t, d, src.ID).State != "Running" {
		t.Fatalf("targets from Running: %s %s, source %s", f1s.State, f1t.State, get(t, d, src.ID).State)
	}
	f1s = post(t, d, "/instances/"+f1s.ID+"/restore", nil, 200)
	checkIndependent(t, d, f1, f1s)
	if freezeByClone() {
		// Frozen by cloning, three times: the source still has its own
		// RAM file (mapped shared), so its standby saves device state only.
		if _, err := os.Stat(filepath.Join(d.dataDir, "instances", src.ID, "mem")); err != nil {
			t.Fatalf("source lost its own RAM file to a fork: %v", err)
		}
	}

	// Fork of a fork.
	f2 := post(t, d, "/instances/"+f1.ID+"/fork", map[string]any{"name": "fork-of-fork", "from_running": true}, 201)
	t.Cleanup(func() { d.do("DELETE", "/instances/"+f2.ID+"?graceful_shutdown=false", nil, nil) })
	checkIndependent(t, d, f1, f2)

	// From Standby: default Standby, then Running and Stopped targets.
	post(t, d, "/instances/"+src.ID+"/standby", nil, 200)
	if fi, err := os.Stat(filepath.Join(d.dataDir, "instances", src.ID, "standby", "state")); err != nil || (freezeByClone() && fi.Size() > 8<<20) {
		t.Fatalf("standby state of a source forked from Running: %v, %v (clone mode: device state only, a few hundred KB)", fi, err)
	}
	f3 := post(t, d, "/instances/"+src.ID+"/fork", map[string]any{"name": "fork-standby"}, 201)
	t.Cleanup(func() { d.do("DELETE", "/instances/"+f3.ID+"?graceful_shutdown=false", nil, nil) })
	if f3.State != "Standby" {
		t.Fatalf("fork of a Standby source defaults to Standby, got %s", f3.State)
	}
	f3 = post(t, d, "/instances/"+f3.ID+"/restore", nil, 200)
	f4 := post(t, d, "/instances/"+src.ID+"/fork", map[string]any{"name": "fork-standby-run", "target_state": "Running"}, 201)
	t.Cleanup(func() { d.do("DELETE", "/instances/"+f4.ID+"?graceful_shutdown=false", nil, nil) })
	f5 := post(t, d, "/instances/"+src.ID+"/fork", map[string]any{"name": "fork-standby-stop", "target_state": "Stopped"}, 201)
	t.Cleanup(func() { d.do("DELETE", "/instances/"+f5.ID+"?graceful_shutdown=false", nil, nil) })
	if f4.State != "Running" || f5.State != "Stopped" || get(t, d, src.ID).State != "Standby" {
		t.Fatalf("targets from Standby: %s %s, source %s", f4.State, f5.State, get(t, d, src.ID).State)
	}
	if freezeByClone() {
		// Forks of one Standby source share one clone of its RAM (and so
		// its page cache).
		if a, b := memoryBaseOf(t, d, f3.ID), memoryBaseOf(t, d, f4.ID); a == "" || a != b {
			t.Fatalf("forks of one Standby source map different RAM: %q and %q", a, b)
		}
	}
	src = post(t, d, "/instances/"+src.ID+"/restore", nil, 200)
	checkIndependent(t, d, src, f3)
	checkIndependent(t, d, f3, f4)

	// From Stopped: default Stopped; Running and Standby boot the disk.
	post(t, d, "/instances/"+src.ID+"/stop", nil, 200)
	f6 := post(t, d, "/instances/"+src.ID+"/fork", map[string]any{"name": "fork-stopped"}, 201)
	t.Cleanup(func() { d.do("DELETE", "/instances/"+f6.ID+"?graceful_shutdown=false", nil, nil) })
	f7 := post(t, d, "/instances/"+src.ID+"/fork", map[string]any{"name": "fork-stopped-run", "target_state": "Running"}, 201)
	t.Cleanup(func() { d.do("DELETE", "/instances/"+f7.ID+"?graceful_shutdown=false", nil, nil) })
	f8 := post(t, d, "/instances/"+src.ID+"/fork", map[string]any{"name": "fork-stopped-standby", "target_state": "Standby"}, 201)
	t.Cleanup(func() { d.do("DELETE", "/instances/"+f8.ID+"?graceful_shutdown=false", nil, nil) })
	if f6.State != "Stopped" || (f7.State != "Running" && f7.State != "Initializing") || f8.State != "Standby" {
		t.Fatalf("targets from Stopped: %s %s %s", f6.State, f7.State, f8.State)
	}
	f7 = waitState(t, d, f7.ID, "Running")
	if out := guestOut(t, d, f7.ID, "hostname; cat /var/data.txt"); out != "fork-stopped-run\nkept\n" {
		t.Fatalf("fork booted from the stopped disk: %q", out)
	}
	f5 = post(t, d, "/instances/"+f5.ID+"/start", nil, 200)
	waitState(t, d, f5.ID, "Running")

	// Deleting the source leaves every fork working.
	if st, raw := d.do("DELETE", "/instances/"+src.ID, nil, nil); st != 204 {
		t.Fatalf("delete source: %d %s", st, raw)
	}
	for _, f := range []instance{f1, f2, f3, f4, f7} {
		f = get(t, d, f.ID)
		if body, err := httpGet("http://"+f.Network.IP+"/who", 30*time.Second); err != nil || !strings.Contains(body, "") {
			t.Fatalf("fork %s after the source's delete: %q %v", f.Name, body, err)
		}
		guestCounter(t, d, f.ID)
	}
}

// memoryBaseOf reads the frozen RAM file an instance maps, from its
// metadata in the data dir.
func memoryBaseOf(t *testing.T, d *daemon, id string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(d.dataDir, "instances", id, "metadata.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		MemoryBase string `json:"memory_base"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m.MemoryBase
}

// checkIndependent checks two running instances that share a history:
// each answers HTTP at its own address, hostnames and random bytes
// differ, and a file written in one is absent in the other.
func checkIndependent(t *testing.T, d *daemon, a, b instance) {
	t.Helper()
	a, b = get(t, d, a.ID), get(t, d, b.ID)
	if a.Network.IP == "" || a.Network.IP == b.Network.IP || a.Network.MAC == b.Network.MAC {
		t.Fatalf("%s and %s share an address or MAC: %+v %+v", a.Name, b.Name, a.Network, b.Network)
	}
	for _, in := range []instance{a, b} {
		guestOut(t, d, in.ID, "echo "+in.Name+" > /www/who")
		out := guestOut(t, d, in.ID, "hostname; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0")
		if !strings.HasPrefix(out, in.Name+"\n"+in.Network.MAC+"\n") || !strings.Contains(out, " "+in.Network.IP+"/") {
			t.Fatalf("inside %s: %q, want hostname %s, MAC %s, address %s", in.Name, out, in.Name, in.Network.MAC, in.Network.IP)
		}
		// No IPv6 address on the network (it is IPv4 only): a link-local
		// address made from the source's MAC would be a duplicate.
		if v6 := guestOut(t, d, in.ID, "grep -v ' lo$' /proc/net/if_inet6 || true"); strings.TrimSpace(v6) != "" {
			t.Fatalf("inside %s: IPv6 addresses on the network interface:\n%s", in.Name, v6)
		}
	}
	for _, in := range []instance{a, b} {
		body, err := httpGet("http://"+in.Network.IP+"/who", 30*time.Second)
		if err != nil || body != in.Name+"\n" {
			t.Fatalf("HTTP to %s at %s: %q %v", in.Name, in.Network.IP, body, err)
		}
	}
	ra := guestOut(t, d, a.ID, "head -c 16 /dev/urandom | od -An -tx1")
	rb := guestOut(t, d, b.ID, "head -c 16 /dev/urandom | od -An -tx1")
	if ra == rb {
		t.Fatalf("%s and %s read the same random bytes", a.Name, b.Name)
	}
	marker := fmt.Sprintf("/var/only-%s-%d", a.Name, time.Now().UnixNano())
	guestOut(t, d, a.ID, "echo x > "+marker)
	if out, _ := wsExec(t, d, b.ID, sh("test -e "+marker+" && echo present || echo absent"), nil, nil); out != "absent\n" {
		t.Fatalf("a file written in %s shows in %s", a.Name, b.Name)
	}
}
