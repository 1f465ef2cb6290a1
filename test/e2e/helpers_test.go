package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// instance is the subset of the API's Instance the tests read.
type instance struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Image       string            `json:"image"`
	State       string            `json:"state"`
	StateError  *string           `json:"state_error"`
	ExitCode    *int              `json:"exit_code"`
	ExitMessage *string           `json:"exit_message"`
	StartedAt   *time.Time        `json:"started_at"`
	StoppedAt   *time.Time        `json:"stopped_at"`
	Size        string            `json:"size"`
	OverlaySize string            `json:"overlay_size"`
	Vcpus       int               `json:"vcpus"`
	Hypervisor  string            `json:"hypervisor"`
	HasSnapshot *bool             `json:"has_snapshot"`
	Env         map[string]string `json:"env"`
	Tags        map[string]string `json:"tags"`
	Network     struct {
		Enabled bool   `json:"enabled"`
		IP      string `json:"ip"`
		MAC     string `json:"mac"`
		Name    string `json:"name"`
	} `json:"network"`
}

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

var (
	sharedOnce   sync.Once
	sharedD      *daemon
	sharedImage  string
	sharedErr    error
	demoImageTag = "demo:latest"
)

// shared returns the daemon most tests use, with the busybox demo image
// pushed to its registry. Tests on it must use their own instance names.
func shared(t *testing.T) (*daemon, string) {
	t.Helper()
	sharedOnce.Do(func() {
		sharedD, sharedErr = startDaemon("shared")
		if sharedErr != nil {
			return
		}
		sharedImage, sharedErr = pushDemo(t, sharedD)
	})
	if sharedErr != nil {
		t.Fatalf("shared daemon: %v", sharedErr)
	}
	return sharedD, sharedImage
}

func waitImageReady(d *daemon, ref string) error {
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		var img struct{ Status string }
		st, body := d.do("GET", "/images/"+escapeRef(ref), nil, &img)
		if st == 200 && img.Status == "ready" {
			return nil
		}
		if st == 200 && img.Status == "failed" {
			return fmt.Errorf("image %s failed: %s", ref, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("image %s not ready in time", ref)
}

// escapeRef encodes an image reference for /images/{name} as the SDK does.
func escapeRef(ref string) string { return strings.ReplaceAll(ref, "/", "%2F") }

// create posts an instance and fails the test unless it gets 201.
func create(t *testing.T, d *daemon, body map[string]any) instance {
	t.Helper()
	var in instance
	st, raw := d.do("POST", "/instances", body, &in)
	if st != 201 {
		t.Fatalf("create %v: status %d: %s\n%s", body["name"], st, raw, d.log())
	}
	t.Cleanup(func() { d.do("DELETE", "/instances/"+in.ID+"?graceful_shutdown=false", nil, nil) })
	return in
}

// waitState waits for the instance to reach state and returns it.
func waitState(t *testing.T, d *daemon, id, state string) instance {
	t.Helper()
	var w struct {
		State    string `json:"state"`
		TimedOut bool   `json:"timed_out"`
	}
	st, raw := d.do("GET", "/instances/"+id+"/wait?state="+state+"&timeout=3m", nil, &w)
	if st != 200 || w.State != state {
		app, _ := os.ReadFile(d.dataDir + "/instances/" + id + "/logs/app.log")
		t.Fatalf("wait %s for %s: status %d %s\napp log:\n%s\ndaemon:\n%s", id, state, st, raw, app, d.log())
	}
	return get(t, d, id)
}

func get(t *testing.T, d *daemon, id string) instance {
	t.Helper()
	var in instance
	if st, raw := d.do("GET", "/instances/"+id, nil, &in); st != 200 {
		t.Fatalf("get %s: %d %s", id, st, raw)
	}
	return in
}

// httpGet fetches a URL from the test namespace (where the guests are).
func httpGet(url string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		c := &http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return string(b), nil
			}
			lastErr = fmt.Errorf("status %d", resp.StatusCode)
		} else {
			lastErr = err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return "", lastErr
}

// appLog returns the instance's app log through the API.
func appLog(t *testing.T, d *daemon, id string) string {
	t.Helper()
	st, raw := d.do("GET", "/instances/"+id+"/logs?tail=1000", nil, nil)
	if st != 200 {
		t.Fatalf("logs %s: %d %s", id, st, raw)
	}
	return sseLines(string(raw))
}

// sseLines decodes "data: <json string>" events into plain lines.
func sseLines(raw string) string {
	var b strings.Builder
	for _, l := range strings.Split(raw, "\n") {
		data, ok := strings.CutPrefix(l, "data: ")
		if !ok {
			continue
		}
		var s string
		if err := jsonUnmarshal(data, &s); err == nil {
			b.WriteString(s + "\n")
		}
	}
	return b.String()
}

// waitLog waits until the app log contains want.
func waitLog(t *testing.T, d *daemon, id, want string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var log string
	for time.Now().Before(deadline) {
		if log = appLog(t, d, id); strings.Contains(log, want) {
			return log
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("app log of %s never contained %q:\n%s", id, want, log)
	return ""
}

// tapExists reports whether a network device named name exists.
func tapExists(name string) bool {
	return exec.Command("ip", "link", "show", name).Run() == nil
}

// qemuRunning reports whether a QEMU process for instance id exists.
func qemuRunning(id string) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		if strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), id) {
			st, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
			if !strings.Contains(string(st), ") Z ") {
				return true
			}
		}
	}
	return false
}

// eventually polls cond every 10 ms until it holds or d has passed.
func eventually(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); ; time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

// daemonWithDemo starts a daemon of the test's own (one it may kill and
// restart) with the busybox demo image pushed and ready.
func daemonWithDemo(t *testing.T, name string) (*daemon, string) {
	t.Helper()
	d := newDaemon(t, name)
	img, err := pushDemo(t, d)
	if err != nil {
		t.Fatal(err)
	}
	return d, img
}

// pushDemo pushes the busybox demo image to d and returns its name (in
// d's registry, tag latest) once it is ready to run.
func pushDemo(t *testing.T, d *daemon) (string, error) {
	out, err := d.cli(t, "push", imageTar(t, "busybox"), demoImageTag)
	if err != nil {
		return "", err
	}
	ref, _, _ := strings.Cut(strings.TrimSpace(out), "@")
	img := ref + ":latest"
	return img, waitImageReady(d, img)
}
