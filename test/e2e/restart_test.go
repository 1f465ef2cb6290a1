package e2e

import (
	"os"
	"testing"
	"time"
)

// TestDaemonKilledAndRestarted: SIGKILL the daemon with VMs running and
// one exiting meanwhile; the restarted daemon lists the same instances in
// the same states, still controls the VM that kept running, and records
// the exit of the one that ended while no daemon watched.
func TestDaemonKilledAndRestarted(t *testing.T) {
	t.Parallel()
	d, img := daemonWithDemo(t, "restart")
	keeps := create(t, d, map[string]any{"name": "keeps-running", "image": img})
	ends := create(t, d, map[string]any{"name": "ends-later", "image": img,
		"cmd": []string{"/bin/sh", "-c", "echo started; sleep 25; exit 7"}})
	stopped := create(t, d, map[string]any{"name": "was-stopped", "image": img, "cmd": []string{"/bin/sh", "-c", "exit 0"}})
	keeps = waitState(t, d, keeps.ID, "Running")
	waitState(t, d, ends.ID, "Running")
	d.do("GET", "/instances/"+stopped.ID+"/wait?state=Stopped&timeout=3m", nil, nil)

	before := map[string]string{}
	var list []instance
	d.do("GET", "/instances", nil, &list)
	for _, in := range list {
		before[in.ID] = in.State
	}

	if out, code := wsExec(t, d, keeps.ID, sh("echo before"), nil, nil); out != "before\n" || code != 0 {
		t.Fatalf("exec before the restart: %q %d", out, code)
	}
	d.kill()
	// While no daemon runs, "ends-later" exits (guest uptime passes 30 s).
	deadline := time.Now().Add(3 * time.Minute)
	for qemuRunning(ends.ID) && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if qemuRunning(ends.ID) {
		t.Fatal("ends-later did not exit while the daemon was down")
	}
	if !qemuRunning(keeps.ID) {
		t.Fatal("keeps-running's VM died with the daemon")
	}
	d.start(t)

	d.do("GET", "/instances", nil, &list)
	after := map[string]instance{}
	for _, in := range list {
		after[in.ID] = in
	}
	if len(after) != len(before) {
		t.Fatalf("after restart %d instances, before %d", len(after), len(before))
	}
	if s := after[keeps.ID].State; s != "Running" || before[keeps.ID] != "Running" {
		t.Fatalf("keeps-running: before %s after %s", before[keeps.ID], s)
	}
	if s := after[stopped.ID].State; s != "Stopped" {
		t.Fatalf("was-stopped after restart: %s", s)
	}
	e := after[ends.ID]
	if e.State != "Stopped" || e.ExitCode == nil || *e.ExitCode != 7 {
		ev, _ := os.ReadFile(d.dataDir + "/instances/" + ends.ID + "/events.log")
		t.Fatalf("ends-later after restart: state %s exit %v %v\nevents:\n%s\napp:\n%s", e.State, e.ExitCode, e.ExitMessage, ev, appLog(t, d, ends.ID))
	}
	if tapExists(tapName(ends.ID)) {
		t.Fatal("the TAP of the VM that ended while the daemon was down was not removed")
	}
	if body, err := httpGet("http://"+keeps.Network.IP+"/", 30*time.Second); err != nil || body != "hello from hypeman demo\n" {
		t.Fatalf("keeps-running unreachable after restart: %q %v", body, err)
	}

	// The guest agent's channel comes back with the new daemon.
	if out, code := wsExec(t, d, keeps.ID, sh("echo after"), nil, nil); out != "after\n" || code != 0 {
		t.Fatalf("exec after the restart: %q %d", out, code)
	}

	var st instance
	if code, raw := d.do("POST", "/instances/"+keeps.ID+"/stop", nil, &st); code != 200 || st.State != "Stopped" {
		t.Fatalf("stop after restart: %d %s", code, raw)
	}
	if qemuRunning(keeps.ID) || tapExists(tapName(keeps.ID)) {
		t.Fatal("stop after restart left QEMU or the TAP")
	}
}
