package api

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/hypeman-vm/hypeman/internal/instances"
)

func (e *agentEnv) get(t *testing.T, p string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", e.srv.URL+p, nil)
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func TestStatInstancePath(t *testing.T) {
	e := newAgentEnv(t)
	e.guest.put("/d", &fakeFile{dir: true, mode: 0o40755})
	e.guest.put("/d/f", &fakeFile{mode: 0o100600, data: []byte("abc")})
	e.guest.put("/d/l", &fakeFile{link: "f", mode: 0o777})
	cases := []struct {
		query  string
		status int
		want   string
	}{
		{"path=/d", 200, `{"exists":true,"is_dir":true,"is_file":false,"is_symlink":false,"mode":493,"size":0}`},
		{"path=/d/l", 200, `{"exists":true,"is_dir":false,"is_file":false,"is_symlink":true,"link_target":"f","mode":511,"size":0}`},
		{"path=/d/l&follow_links=true", 200, `{"exists":true,"is_dir":false,"is_file":true,"mode":384,"size":3}`},
		{"path=/nope", 200, `{"exists":false}`},
	}
	for _, c := range cases {
		status, body := e.get(t, "/instances/vm/stat?"+c.query)
		if status != c.status || body != c.want {
			t.Errorf("%s: %d %s\nwant %s", c.query, status, body, c.want)
		}
	}
	if status, body := e.get(t, "/instances/stopped/stat?path=/"); status != 409 || !strings.Contains(body, "invalid_state") {
		t.Errorf("stopped: %d %s", status, body)
	}
	if status, _ := e.get(t, "/instances/vm/stat"); status != 400 {
		t.Errorf("no path: %d", status)
	}
}

func TestInstanceStatsThroughTheManager(t *testing.T) {
	env := newAPIEnv(t)
	resp := env.do(t, "GET", "/instances/inst-1/stats", "token", "")
	b, _ := io.ReadAll(resp.Body)
	want := `{"allocated_memory_bytes":67108864,"allocated_vcpus":1,"cpu_seconds":0,"instance_id":"` + idOne +
		`","instance_name":"inst-1","memory_rss_bytes":0,"memory_utilization_ratio":0,"memory_vms_bytes":0,"network_rx_bytes":0,"network_tx_bytes":0}`
	if resp.StatusCode != 200 || strings.TrimSpace(string(b)) != want {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	if resp := env.do(t, "GET", "/instances/nope/stats", "token", ""); resp.StatusCode != 404 {
		t.Fatalf("unknown instance: %d", resp.StatusCode)
	}
}

func TestStatsConversion(t *testing.T) {
	inst := instances.Instance{}
	inst.ID, inst.Name = "id", "n"
	out := toAPIStats(inst, instances.Stats{CPUSeconds: 1.5, RSSBytes: 256, VMSBytes: 1024, NetRxBytes: 7, NetTxBytes: 9, VCPUs: 2, MemoryBytes: 1024})
	if out.MemoryUtilizationRatio == nil || *out.MemoryUtilizationRatio != 0.25 || out.NetworkRxBytes != 7 || out.NetworkTxBytes != 9 ||
		out.CpuSeconds != 1.5 || out.AllocatedVcpus != 2 {
		t.Fatalf("%+v", out)
	}
	if out := toAPIStats(inst, instances.Stats{RSSBytes: 5}); out.MemoryUtilizationRatio != nil {
		t.Fatalf("ratio without allocated memory: %v", *out.MemoryUtilizationRatio)
	}
}
