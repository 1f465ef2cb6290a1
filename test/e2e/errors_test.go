package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

// TestBadInput sends each 4xx case of the endpoints and checks the status,
// the error code, and that nothing was left behind (instance dirs, TAPs,
// QEMU processes).
func TestBadInput(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	running := create(t, d, map[string]any{"name": "bad-input-running", "image": img})
	stopped := create(t, d, map[string]any{"name": "bad-input-stopped", "image": img, "cmd": []string{"/bin/sh", "-c", "exit 0"}})
	waitState(t, d, running.ID, "Running")
	d.do("GET", "/instances/"+stopped.ID+"/wait?state=Stopped&timeout=3m", nil, nil)

	base := func(extra map[string]any) map[string]any {
		b := map[string]any{"name": "bad-input-new", "image": img}
		for k, v := range extra {
			b[k] = v
		}
		return b
	}
	cases := []struct {
		name, method, path string
		body               any
		status             int
		code               string
		msgHas             string
	}{
		{"bad name", "POST", "/instances", base(map[string]any{"name": "Bad_Name"}), 400, "Bad Request", ""},
		{"name too long", "POST", "/instances", base(map[string]any{"name": strings.Repeat("a", 64)}), 400, "Bad Request", ""},
		{"missing image", "POST", "/instances", map[string]any{"name": "x"}, 400, "Bad Request", ""},
		{"malformed JSON", "POST", "/instances", `{"name":`, 400, "Bad Request", ""},
		{"invalid image reference", "POST", "/instances", base(map[string]any{"image": "invalid::ref"}), 400, "invalid_name", ""},
		{"unknown image", "POST", "/instances", base(map[string]any{"image": d.addr + "/missing/image:latest"}), 404, "not_found", ""},
		{"oversized vcpus", "POST", "/instances", base(map[string]any{"vcpus": 512}), 400, "invalid_request", "vcpus"},
		{"negative vcpus", "POST", "/instances", base(map[string]any{"vcpus": -1}), 400, "", ""},
		{"bad size", "POST", "/instances", base(map[string]any{"size": "lots"}), 400, "invalid_size", ""},
		{"size over limit", "POST", "/instances", base(map[string]any{"size": "1TB"}), 400, "invalid_size", "limit"},
		{"overlay over limit", "POST", "/instances", base(map[string]any{"overlay_size": "2TB"}), 400, "invalid_overlay_size", ""},
		{"hotplug unsupported", "POST", "/instances", base(map[string]any{"hotplug_size": "1GB"}), 400, "invalid_hotplug_size", ""},
		{"firecracker unavailable", "POST", "/instances", base(map[string]any{"hypervisor": "firecracker"}), 400, "hypervisor_unavailable", "KVM"},
		{"cloud-hypervisor unavailable", "POST", "/instances", base(map[string]any{"hypervisor": "cloud-hypervisor"}), 400, "hypervisor_unavailable", "not installed"},
		{"vz unavailable", "POST", "/instances", base(map[string]any{"hypervisor": "vz"}), 400, "hypervisor_unavailable", "macOS"},
		{"unknown hypervisor", "POST", "/instances", base(map[string]any{"hypervisor": "kvmtool"}), 400, "Bad Request", ""},
		{"bad platform", "POST", "/instances", base(map[string]any{"platform": "linux/arm64"}), 400, "invalid_platform", ""},
		{"bad tag key", "POST", "/instances", base(map[string]any{"tags": map[string]string{"bad\u00e9": "v"}}), 400, "invalid_request", ""},
		{"volumes not supported", "POST", "/instances", base(map[string]any{"volumes": []map[string]any{{"volume_id": "v", "mount_path": "/data"}}}), 501, "not_supported", "volumes"},
		{"name conflict", "POST", "/instances", base(map[string]any{"name": "bad-input-running"}), 409, "name_conflict", ""},
		{"unknown instance", "GET", "/instances/nosuchinstance", nil, 404, "not_found", ""},
		{"delete unknown", "DELETE", "/instances/nosuchinstance", nil, 404, "not_found", ""},
		{"start while Running", "POST", "/instances/" + running.ID + "/start", map[string]any{}, 409, "invalid_state", "Running"},
		{"stop while Stopped", "POST", "/instances/" + stopped.ID + "/stop", nil, 409, "invalid_state", "Stopped"},
		{"wait for Unknown", "GET", "/instances/" + running.ID + "/wait?state=Unknown", nil, 400, "invalid_state", ""},
		{"wait bad state", "GET", "/instances/" + running.ID + "/wait?state=Sleeping", nil, 400, "Bad Request", ""},
		{"wait bad timeout", "GET", "/instances/" + running.ID + "/wait?state=Running&timeout=soon", nil, 400, "invalid_timeout", ""},
		{"wait negative timeout", "GET", "/instances/" + running.ID + "/wait?state=Running&timeout=-1s", nil, 400, "invalid_timeout", ""},
		{"logs bad source", "GET", "/instances/" + running.ID + "/logs?source=kernel", nil, 400, "Bad Request", ""},
		{"logs unknown instance", "GET", "/instances/nosuchinstance/logs", nil, 404, "not_found", ""},
		{"image bad name", "GET", "/images/invalid::ref", nil, 400, "invalid_name", ""},
		{"image unknown", "GET", "/images/" + escapeRef(d.addr+"/missing/image:latest"), nil, 404, "not_found", ""},
		{"pull bad name", "POST", "/images", map[string]any{"name": "has spaces"}, 400, "invalid_name", ""},
		{"pull unknown", "POST", "/images", map[string]any{"name": d.addr + "/missing/image:latest"}, 404, "not_found", ""},
		{"delete unknown image", "DELETE", "/images/" + escapeRef(d.addr+"/missing/image:latest"), nil, 404, "not_found", ""},
		{"unknown route", "GET", "/nope", nil, 404, "Not Found", ""},
	}
	dirsBefore, tapsBefore, qemuBefore := leftovers(d)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var e apiError
			st, raw := d.do(tc.method, tc.path, tc.body, &e)
			if st != tc.status || (tc.code != "" && e.Code != tc.code) || !strings.Contains(e.Message, tc.msgHas) {
				t.Fatalf("%s %s: got %d %s, want %d code %q message containing %q", tc.method, tc.path, st, raw, tc.status, tc.code, tc.msgHas)
			}
			if e.Message == "" {
				t.Fatalf("error without a message: %s", raw)
			}
		})
	}
	dirsAfter, tapsAfter, qemuAfter := leftovers(d)
	if dirsAfter != dirsBefore || tapsAfter != tapsBefore || qemuAfter != qemuBefore {
		t.Fatalf("bad input left something: dirs %q -> %q, taps %q -> %q, qemu %d -> %d",
			dirsBefore, dirsAfter, tapsBefore, tapsAfter, qemuBefore, qemuAfter)
	}
}

// TestAuth checks 401s, and that /health and /spec.yaml need no token.
func TestAuth(t *testing.T) {
	t.Parallel()
	d, _ := shared(t)
	for _, tc := range []struct{ token, msg string }{{"", "authorization header required"}, {"not-a-jwt", "invalid token"}} {
		var e apiError
		st, raw := d.doToken("GET", "/instances", nil, &e, tc.token)
		if st != 401 || e.Code != "Unauthorized" || e.Message != tc.msg {
			t.Fatalf("token %q: %d %s", tc.token, st, raw)
		}
	}
	if st, raw := d.doToken("GET", "/health", nil, nil, ""); st != 200 || strings.TrimSpace(string(raw)) != `{"status":"ok"}` {
		t.Fatalf("/health: %d %s", st, raw)
	}
	st, raw := d.doToken("GET", "/spec.yaml", nil, nil, "")
	if st != 200 || !strings.Contains(string(raw), "openapi: 3.") {
		t.Fatalf("/spec.yaml: %d", st)
	}
}

// TestCapabilities: QEMU is the available default, with its accelerator
// named; the others are unavailable with a reason.
func TestCapabilities(t *testing.T) {
	t.Parallel()
	d, _ := shared(t)
	var c struct {
		DefaultRuntime struct {
			Name      string `json:"name"`
			Available bool   `json:"available"`
		} `json:"default_runtime"`
		Runtimes []struct {
			Name        string `json:"name"`
			Available   bool   `json:"available"`
			Accelerator string `json:"accelerator"`
			Reason      string `json:"reason"`
		} `json:"runtimes"`
	}
	if st, raw := d.do("GET", "/capabilities", nil, &c); st != 200 {
		t.Fatalf("capabilities: %d %s", st, raw)
	}
	if c.DefaultRuntime.Name != "qemu" || !c.DefaultRuntime.Available {
		t.Fatalf("default runtime %+v", c.DefaultRuntime)
	}
	var names []string
	for _, r := range c.Runtimes {
		names = append(names, r.Name)
		switch {
		case r.Name == "qemu" && (!r.Available || (r.Accelerator != "tcg" && r.Accelerator != "kvm")):
			t.Fatalf("qemu runtime %+v", r)
		case r.Name != "qemu" && (r.Available || r.Reason == ""):
			t.Fatalf("runtime %s should be unavailable with a reason: %+v", r.Name, r)
		}
	}
	if !sort.StringsAreSorted(names) || len(names) != 5 {
		t.Fatalf("runtimes %v: want all five, sorted", names)
	}
}

// leftovers summarizes what instances occupy: instance dirs, hm TAPs on
// the daemon's bridge, and QEMU processes under the data dir.
func leftovers(d *daemon) (dirs, taps string, qemus int) {
	ents, _ := os.ReadDir(d.dataDir + "/instances")
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	out, _ := exec.Command("ip", "-j", "link", "show", "master", d.bridge).Output()
	var links []struct {
		Name string `json:"ifname"`
	}
	_ = json.Unmarshal(out, &links)
	var tapNames []string
	for _, l := range links {
		tapNames = append(tapNames, l.Name)
	}
	sort.Strings(tapNames)
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		b, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), d.dataDir) {
			st, _ := os.ReadFile("/proc/" + p.Name() + "/stat")
			if !strings.Contains(string(st), ") Z ") {
				qemus++
			}
		}
	}
	return strings.Join(names, ","), strings.Join(tapNames, ","), qemus
}
