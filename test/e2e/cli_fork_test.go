package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestCLIForkAndSnapshots: standby, restore, fork and the snapshot
// commands, as a user types them.
func TestCLIForkAndSnapshots(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	run := func(args ...string) string {
		t.Helper()
		out, err := d.cli(t, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	id := strings.TrimSpace(run("run", "--name", "cli-src", img))
	t.Cleanup(func() { d.cli(t, "rm", "-f", id) })
	run("exec", "cli-src", "sh", "-c", "echo from-source > /var/mark")

	run("standby", "cli-src")
	if ps := run("ps", "-a"); !strings.Contains(ps, "Standby") {
		t.Fatalf("ps after standby:\n%s", ps)
	}
	run("restore", "cli-src")
	forked := run("fork", "--from-running", "cli-src", "cli-fork")
	f := strings.Fields(forked)
	if len(f) < 3 || f[1] != "cli-fork" || f[2] != "Running" {
		t.Fatalf("fork printed %q", forked)
	}
	t.Cleanup(func() { d.cli(t, "rm", "-f", "cli-fork") })
	if out := run("exec", "cli-fork", "sh", "-c", "hostname; cat /var/mark"); out != "cli-fork\nfrom-source\n" {
		t.Fatalf("in the fork: %q", out)
	}

	atSnapshot := get(t, d, id).Network
	snap := strings.TrimSpace(run("snapshot", "create", "--name", "first", "cli-src"))
	if ls := run("snapshot", "ls", "cli-src"); !strings.Contains(ls, snap) || !strings.Contains(ls, "first") || !strings.Contains(ls, "Standby") {
		t.Fatalf("snapshot ls:\n%s", ls)
	}
	run("exec", "cli-src", "sh", "-c", "echo after-snapshot > /var/mark")
	// Snapshots are named by ID or by the name they were given.
	fromSnap := run("snapshot", "fork", "first", "cli-from-snap")
	t.Cleanup(func() { d.cli(t, "rm", "-f", "cli-from-snap") })
	if !strings.Contains(fromSnap, "Running") {
		t.Fatalf("snapshot fork printed %q", fromSnap)
	}
	if out := run("exec", "cli-from-snap", "cat", "/var/mark"); out != "from-source\n" {
		t.Fatalf("the snapshot's disk: %q", out)
	}
	run("stop", "cli-src")
	// A fork of a Stopped source boots: the CLI answers once it runs.
	cold := strings.Fields(run("fork", "--target-state", "Running", "cli-src", "cli-cold"))
	t.Cleanup(func() { d.cli(t, "rm", "-f", "cli-cold") })
	if len(cold) < 3 || cold[2] != "Running" {
		t.Fatalf("fork of a Stopped source printed %q", cold)
	}
	if out := run("exec", "cli-cold", "hostname"); out != "cli-cold\n" {
		t.Fatalf("exec right after the fork of a Stopped source: %q", out)
	}
	run("snapshot", "restore", "cli-src", "first")
	if out := run("exec", "cli-src", "cat", "/var/mark"); out != "from-source\n" {
		t.Fatalf("after restoring the snapshot in place: %q", out)
	}
	// Rolled back with the address and MAC it had then (free again), in
	// the API and inside the guest.
	back := get(t, d, id).Network
	if back.IP != atSnapshot.IP || back.MAC != atSnapshot.MAC {
		t.Fatalf("in-place restore: network %+v, had %+v at the snapshot", back, atSnapshot)
	}
	if out := run("exec", "cli-src", "sh", "-c", "cat /sys/class/net/eth0/address; ip -4 -o addr show eth0"); !strings.HasPrefix(out, back.MAC+"\n") || !strings.Contains(out, " "+back.IP+"/") {
		t.Fatalf("in-place restore, inside the guest: %q, want %s %s", out, back.MAC, back.IP)
	}
	if body, err := httpGet("http://"+back.IP+"/", 30*time.Second); err != nil {
		t.Fatalf("HTTP to the restored instance at %s: %q %v", back.IP, body, err)
	}
	if _, err := d.cli(t, "snapshot", "fork", "no-such-snapshot", "cli-nope"); err == nil || !strings.Contains(err.Error(), `no snapshot with ID or name "no-such-snapshot"`) {
		t.Fatalf("snapshot fork of an unknown name: %v", err)
	}
	run("snapshot", "rm", "first")
	if ls := run("snapshot", "ls"); strings.Contains(ls, snap) {
		t.Fatalf("snapshot still listed:\n%s", ls)
	}
}
