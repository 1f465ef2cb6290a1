package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestCrashConsistency kills the daemon (SIGKILL, through the test hook
// HYPEMAN_TEST_CRASH_AFTER) right after each step of standby, restore,
// fork and the in-place freeze of a running source (by cloning or by a VMM
// switch, as the run's freeze mode has it), restarts it, and
// checks that every instance is in its old or its new state, that no QEMU
// process, TAP or instance dir is orphaned, and that the source still
// works.
func TestCrashConsistency(t *testing.T) {
	t.Parallel()
	d, img := daemonWithDemo(t, "crash")
	src := create(t, d, map[string]any{"name": "crash-src", "image": img, "entrypoint": []string{"/bin/sh", "-c", counterScript}})
	waitState(t, d, src.ID, "Running")

	type tcase struct {
		crash  string // op/step
		from   string // the source's state before
		action func() (int, []byte)
		ok     []string // acceptable states of the source afterwards
	}
	standby := func() (int, []byte) { return d.do("POST", "/instances/"+src.ID+"/standby", nil, nil) }
	restore := func() (int, []byte) { return d.do("POST", "/instances/"+src.ID+"/restore", nil, nil) }
	forkStandby := func() (int, []byte) {
		return d.do("POST", "/instances/"+src.ID+"/fork", map[string]any{"name": "crash-fork", "target_state": "Running"}, nil)
	}
	forkRunning := func() (int, []byte) {
		return d.do("POST", "/instances/"+src.ID+"/fork", map[string]any{"name": "crash-fork", "from_running": true}, nil)
	}
	var cases []tcase
	for _, s := range []string{"detach-agent", "pause", "save-state", "write-manifest"} {
		cases = append(cases, tcase{"standby/" + s, "Running", standby, []string{"Running", "Standby"}})
	}
	for _, s := range []string{"network", "restore-vm", "guest"} {
		cases = append(cases, tcase{"restore/" + s, "Standby", restore, []string{"Standby", "Running"}})
	}
	for _, s := range []string{"freeze-source", "make-fork", "target-state"} {
		cases = append(cases, tcase{"fork/" + s, "Standby", forkStandby, []string{"Standby"}})
	}
	// A running source whose RAM is its own file is frozen in place by
	// cloning (clone-running), or else by a switch to a new VMM
	// (freeze-running).
	runningOp, runningSteps := "freeze-running", []string{"record", "freeze-files", "tap", "start-vmm", "migrate", "commit"}
	if freezeByClone() {
		runningOp, runningSteps = "clone-running", []string{"record", "write-back", "pause", "save-state", "clone", "resume", "sync-state"}
	}
	for _, s := range runningSteps {
		cases = append(cases, tcase{runningOp + "/" + s, "Running", forkRunning, []string{"Running"}})
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.crash, "/", "-"), func(t *testing.T) {
			bringTo(t, d, src.ID, tc.from)
			d.kill()
			d.extraEnv = []string{"HYPEMAN_TEST_CRASH_AFTER=" + tc.crash}
			d.start(t)
			st, _ := tc.action()
			d.waitExit(t, 2*time.Minute)
			if st != 0 {
				t.Fatalf("the request answered %d: the daemon did not crash after %s", st, tc.crash)
			}
			d.extraEnv = nil
			d.start(t)
			got := get(t, d, src.ID)
			if !contains(tc.ok, got.State) {
				t.Fatalf("after a crash after %s: source is %s, want one of %v", tc.crash, got.State, tc.ok)
			}
			checkNoOrphans(t, d)
			bringTo(t, d, src.ID, "Running")
			guestCounter(t, d, src.ID)
			if body, err := httpGet("http://"+get(t, d, src.ID).Network.IP+"/who", 30*time.Second); err != nil || body != "source\n" {
				t.Fatalf("source unreachable after the crash: %q %v", body, err)
			}
			deleteOthers(t, d, src.ID)
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// bringTo moves an instance to state (Running or Standby).
func bringTo(t *testing.T, d *daemon, id, state string) {
	t.Helper()
	cur := get(t, d, id).State
	switch {
	case cur == state:
	case state == "Running" && cur == "Standby":
		post(t, d, "/instances/"+id+"/restore", nil, 200)
	case state == "Running" && cur == "Stopped":
		post(t, d, "/instances/"+id+"/start", nil, 200)
		waitState(t, d, id, "Running")
	case state == "Standby":
		bringTo(t, d, id, "Running")
		post(t, d, "/instances/"+id+"/standby", nil, 200)
	default:
		t.Fatalf("cannot bring %s from %s to %s", id, cur, state)
	}
}

// checkNoOrphans: one QEMU per Running instance, one TAP per running
// instance on the daemon's bridge, and an instance dir only for listed
// instances.
func checkNoOrphans(t *testing.T, d *daemon) {
	t.Helper()
	var list []instance
	d.do("GET", "/instances", nil, &list)
	running, listed := 0, map[string]bool{}
	for _, in := range list {
		listed[in.ID] = true
		if in.State == "Running" || in.State == "Initializing" {
			running++
		}
		if in.State == "Unknown" {
			t.Fatalf("instance %s is Unknown: %v", in.Name, in.StateError)
		}
	}
	dirs, taps, qemus := leftovers(d)
	for _, dir := range strings.Split(dirs, ",") {
		if dir != "" && !listed[dir] {
			t.Fatalf("orphan instance dir %s (listed: %v)", dir, listed)
		}
	}
	if qemus != running {
		t.Fatalf("%d QEMU processes for %d running instances", qemus, running)
	}
	ntaps := 0
	if taps != "" {
		ntaps = len(strings.Split(taps, ","))
	}
	if ntaps != running {
		t.Fatalf("TAPs on the bridge %q for %d running instances", taps, running)
	}
	ents, _ := os.ReadDir(d.dataDir + "/instances")
	if len(ents) != len(list) {
		t.Fatalf("%d instance dirs for %d instances", len(ents), len(list))
	}
}

func deleteOthers(t *testing.T, d *daemon, keep string) {
	var list []instance
	d.do("GET", "/instances", nil, &list)
	for _, in := range list {
		if in.ID != keep {
			if st, raw := d.do("DELETE", "/instances/"+in.ID+"?graceful_shutdown=false", nil, nil); st != 204 {
				t.Fatalf("delete %s: %d %s", in.Name, st, raw)
			}
		}
	}
	_ = fmt.Sprint
}
