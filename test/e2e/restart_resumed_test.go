package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestResumedInstancesSurviveDaemonRestart: VMs that never booted under
// this daemon (a fork resumed from memory, an instance made from a
// Standby snapshot, an instance restored from standby) are adopted as
// Running by a restarted daemon and answer exec.
func TestResumedInstancesSurviveDaemonRestart(t *testing.T) {
	t.Parallel()
	d, img := daemonWithDemo(t, "restart-resumed")
	src := create(t, d, map[string]any{"name": "rr-src", "image": img, "entrypoint": []string{"/bin/sh", "-c", counterScript}})
	waitState(t, d, src.ID, "Running")
	post(t, d, "/instances/"+src.ID+"/standby", nil, 200)
	var snap struct {
		ID string `json:"id"`
	}
	if st, raw := d.do("POST", "/instances/"+src.ID+"/snapshots", map[string]any{"kind": "Standby", "name": "rr-snap"}, &snap); st != 201 {
		t.Fatalf("snapshot: %d %s", st, raw)
	}
	fromSnap := post(t, d, "/snapshots/"+snap.ID+"/fork", map[string]any{"name": "rr-from-snap", "target_state": "Running"}, 201)
	fork := post(t, d, "/instances/"+src.ID+"/fork", map[string]any{"name": "rr-fork", "target_state": "Running"}, 201)
	post(t, d, "/instances/"+src.ID+"/restore", nil, 200)

	d.kill()
	d.start(t)
	for _, in := range []instance{src, fromSnap, fork} {
		if !eventually(20*time.Second, func() bool { return get(t, d, in.ID).State == "Running" }) {
			t.Fatalf("%s is %s after the daemon restarted, want Running\n%s", in.Name, get(t, d, in.ID).State, d.log())
		}
		if got := strings.TrimSpace(guestOut(t, d, in.ID, "hostname")); got != in.Name {
			t.Fatalf("hostname of %s after the restart: %q", in.Name, got)
		}
	}
}
