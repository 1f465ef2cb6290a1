package e2e

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// bootScript counts boots in a file on the overlay disk, publishes the
// count over HTTP, and serves /www: what a user sees proves the overlay
// survives stop and start.
const bootScript = "echo boot >> /var/boots; echo boots=$(wc -l < /var/boots); cp /var/boots /www/boots; " +
	"echo hello from program; exec httpd -f -p 80 -h /www"

func tapName(id string) string { return "hm" + id[:13] }

func TestLifecycle(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	in := create(t, d, map[string]any{
		"name": "lifecycle", "image": img, "entrypoint": []string{"/bin/sh", "-c", bootScript},
		"env": map[string]string{"GREETING": "hi"}, "tags": map[string]string{"suite": "e2e"},
	})
	if in.State != "Initializing" && in.State != "Running" {
		t.Fatalf("state after create = %s", in.State)
	}
	if in.Network.IP == "" || in.Network.MAC == "" || in.Network.Name != "default" || !in.Network.Enabled {
		t.Fatalf("network = %+v", in.Network)
	}
	if in.Hypervisor != "qemu" || in.Size != "1024.0 MB" || in.OverlaySize != "10.0 GB" || in.Vcpus != 2 {
		t.Fatalf("fields = %+v", in)
	}
	in = waitState(t, d, in.ID, "Running")
	waitLog(t, d, in.ID, "boots=1")
	if body, err := httpGet("http://"+in.Network.IP+"/", 30*time.Second); err != nil || body != "hello from hypeman demo\n" {
		t.Fatalf("GET / from guest = %q, %v", body, err)
	}
	if !tapExists(tapName(in.ID)) {
		t.Fatalf("TAP %s missing while running", tapName(in.ID))
	}

	var stopped instance
	if st, raw := d.do("POST", "/instances/"+in.ID+"/stop", nil, &stopped); st != 200 {
		t.Fatalf("stop: %d %s", st, raw)
	}
	if stopped.State != "Stopped" || stopped.ExitCode == nil || *stopped.ExitCode != 143 ||
		stopped.ExitMessage == nil || !strings.Contains(*stopped.ExitMessage, "SIGTERM") || stopped.StoppedAt == nil {
		t.Fatalf("after stop: %+v", stopped)
	}
	if stopped.Network.IP != "" || tapExists(tapName(in.ID)) || qemuRunning(in.ID) {
		t.Fatalf("stop left network %+v, TAP %v, QEMU %v", stopped.Network, tapExists(tapName(in.ID)), qemuRunning(in.ID))
	}
	// The app log is the program's output: no kernel line from the power-off.
	if log := appLog(t, d, in.ID); strings.Contains(log, "Power down") || strings.Contains(log, "reboot:") {
		t.Fatalf("kernel lines in the app log after stop:\n%s", log)
	}

	var started instance
	if st, raw := d.do("POST", "/instances/"+in.ID+"/start", nil, &started); st != 200 {
		t.Fatalf("start: %d %s", st, raw)
	}
	if started.ExitCode != nil || started.Network.IP == "" {
		t.Fatalf("after start: exit_code %v, ip %q", started.ExitCode, started.Network.IP)
	}
	started = waitState(t, d, in.ID, "Running")
	waitLog(t, d, in.ID, "boots=2")
	if body, err := httpGet("http://"+started.Network.IP+"/boots", 30*time.Second); err != nil || body != "boot\nboot\n" {
		t.Fatalf("overlay content after restart = %q, %v", body, err)
	}

	if st, raw := d.do("DELETE", "/instances/"+in.ID, nil, nil); st != 204 {
		t.Fatalf("delete: %d %s", st, raw)
	}
	if st, _ := d.do("GET", "/instances/"+in.ID, nil, nil); st != 404 {
		t.Fatalf("get after delete: %d", st)
	}
	if qemuRunning(in.ID) || tapExists(tapName(in.ID)) {
		t.Fatal("delete left the QEMU process or the TAP")
	}
	if _, err := os.Stat(d.dataDir + "/instances/" + in.ID); !os.IsNotExist(err) {
		t.Fatalf("delete left the data dir: %v", err)
	}
}

func TestProgramExitStopsInstance(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	in := create(t, d, map[string]any{"name": "exits", "image": img, "cmd": []string{"/bin/sh", "-c", "echo bye; exit 3"}})
	var w struct{ State string }
	d.do("GET", "/instances/"+in.ID+"/wait?state=Stopped&timeout=3m", nil, &w)
	got := get(t, d, in.ID)
	if got.State != "Stopped" || got.ExitCode == nil || *got.ExitCode != 3 || got.ExitMessage == nil || *got.ExitMessage != "exited with code 3" {
		t.Fatalf("after exit: state %s code %v msg %v", got.State, got.ExitCode, got.ExitMessage)
	}
	if !strings.Contains(appLog(t, d, in.ID), "bye") {
		t.Fatal("app log lacks the program's output")
	}
	if qemuRunning(in.ID) || tapExists(tapName(in.ID)) {
		t.Fatal("exited instance left QEMU or its TAP")
	}
}

func TestConcurrentStartGivesOneVM(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	in := create(t, d, map[string]any{"name": "race", "image": img, "cmd": []string{"/bin/sh", "-c", "exit 0"}})
	d.do("GET", "/instances/"+in.ID+"/wait?state=Stopped&timeout=3m", nil, nil)
	if got := get(t, d, in.ID); got.State != "Stopped" {
		t.Fatalf("state %s, want Stopped", got.State)
	}
	var wg sync.WaitGroup
	statuses := make([]int, 2)
	bodies := make([]string, 2)
	for i := range statuses {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			st, raw := d.do("POST", "/instances/"+in.ID+"/start", map[string]any{"cmd": []string{"/bin/sh", "-c", "sleep 600"}}, nil)
			statuses[i], bodies[i] = st, string(raw)
		}(i)
	}
	wg.Wait()
	ok, conflict := 0, 0
	for i, st := range statuses {
		switch {
		case st == 200:
			ok++
		case st == 409 && strings.Contains(bodies[i], `"invalid_state"`):
			conflict++
		}
	}
	if ok != 1 || conflict != 1 {
		t.Fatalf("statuses %v bodies %q: want one 200 and one 409 invalid_state", statuses, bodies)
	}
	if n := countQEMU(in.ID); n != 1 {
		t.Fatalf("%d QEMU processes for the instance, want 1", n)
	}
}

func countQEMU(id string) int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), id) {
			st, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
			if !strings.Contains(string(st), ") Z ") {
				n++
			}
		}
	}
	return n
}

func TestListFiltersAndResolve(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	a := create(t, d, map[string]any{"name": "filter-a", "image": img, "tags": map[string]string{"team": "a", "env": "x"}, "cmd": []string{"/bin/sh", "-c", "exit 0"}})
	b := create(t, d, map[string]any{"name": "filter-b", "image": img, "tags": map[string]string{"team": "b", "env": "x"}, "cmd": []string{"/bin/sh", "-c", "exit 0"}})
	for _, id := range []string{a.ID, b.ID} {
		d.do("GET", "/instances/"+id+"/wait?state=Stopped&timeout=3m", nil, nil)
	}
	var list []instance
	d.do("GET", "/instances?tags%5Benv%5D=x&tags%5Bteam%5D=a", nil, &list)
	if len(list) != 1 || list[0].ID != a.ID {
		t.Fatalf("tag filter (AND) = %+v", list)
	}
	d.do("GET", "/instances?state=Stopped&tags%5Benv%5D=x", nil, &list)
	if len(list) != 2 {
		t.Fatalf("state+tag filter = %d instances", len(list))
	}
	for _, ref := range []string{a.ID, "filter-a", a.ID[:10]} {
		if got := get(t, d, ref); got.ID != a.ID {
			t.Fatalf("resolve %q = %s", ref, got.ID)
		}
	}
	_ = fmt.Sprint
}
