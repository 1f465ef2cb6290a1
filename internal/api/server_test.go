package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/hypeman-vm/hypeman/internal/auth"
	"github.com/hypeman-vm/hypeman/internal/instances"
	"github.com/hypeman-vm/hypeman/internal/paths"
)

const testSecret = "test-secret"

// Instances crafted in the data dir (as a daemon would have left them).
const (
	idOne = "aaaa00000000000000000001"
	idTwo = "aaaa00000000000000000002"
)

// apiEnv is the whole HTTP handler over a real instances.Manager whose data
// dir holds crafted, stopped instances. Images, network and hypervisors are
// nil: the requests under test never reach them.
type apiEnv struct {
	srv   *httptest.Server
	paths *paths.Paths
	token string
}

func newAPIEnv(t *testing.T) *apiEnv {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "hma")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p, err := paths.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := instances.New(instances.Config{}, p, nil, nil, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	for i, id := range []string{idOne, idTwo} {
		writeInstance(t, p, id, fmt.Sprintf("inst-%d", i+1))
	}
	h, err := New(Deps{Instances: m, Verifier: auth.NewVerifier(testSecret), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	tok, err := auth.Mint(testSecret, "test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &apiEnv{srv: srv, paths: p, token: tok}
}

// writeInstance writes a stopped instance's metadata and logs dir.
func writeInstance(t *testing.T, p *paths.Paths, id, name string) {
	t.Helper()
	if err := os.MkdirAll(p.InstanceLogsDir(id), 0o755); err != nil {
		t.Fatal(err)
	}
	meta := map[string]any{
		"schema_version": 1, "id": id, "name": name, "image": "docker.io/library/alpine:latest",
		"image_digest": "sha256:00", "memory_bytes": 64 << 20, "overlay_bytes": 16 << 20, "vcpus": 1,
		"hypervisor": "qemu", "network": map[string]any{"enabled": false},
		"created_at": time.Now().UTC().Format(time.RFC3339Nano), "boot": 1,
	}
	b, _ := json.Marshal(meta)
	if err := os.WriteFile(p.InstanceMetadata(id), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// do sends a request; auth is "" for none, "token" for a valid token, or
// a whole Authorization header value.
func (e *apiEnv) do(t *testing.T, method, path, authz, body string) *http.Response {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	switch authz {
	case "":
	case "token":
		req.Header.Set("Authorization", "Bearer "+e.token)
	default:
		req.Header.Set("Authorization", authz)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// wantError checks an error response's status and body.
func wantError(t *testing.T, resp *http.Response, status int, code, msgPart string) {
	t.Helper()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d (body %s)", resp.StatusCode, status, b)
	}
	var body errorBody
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatalf("body %q is not an error object: %v", b, err)
	}
	if body.Code != code || !strings.Contains(body.Message, msgPart) {
		t.Errorf("body %+v, want code %q and a message with %q", body, code, msgPart)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	// Deterministic answers must not be retried by the SDK (it retries 409 and 5xx).
	if (status == http.StatusConflict || status == http.StatusNotImplemented) && resp.Header.Get("X-Should-Retry") != "false" {
		t.Errorf("%d without X-Should-Retry: false", status)
	}
}

func signed(t *testing.T, secret string, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAuth(t *testing.T) {
	e := newAPIEnv(t)
	now := time.Now()
	tests := []struct {
		name   string
		path   string
		authz  string
		status int
		code   string
		msg    string
	}{
		{"no header", "/instances", "", 401, "Unauthorized", "authorization header required"},
		{"basic scheme", "/instances", "Basic dXNlcjpwdw==", 401, "Unauthorized", "invalid authorization header format"},
		{"bearer without token", "/instances", "Bearer ", 401, "Unauthorized", "invalid authorization header format"},
		{"bearer only", "/instances", "Bearer", 401, "Unauthorized", "invalid authorization header format"},
		{"garbage token", "/instances", "Bearer not.a.jwt", 401, "Unauthorized", "invalid token"},
		{"wrong secret", "/instances", "Bearer " + signed(t, "other", jwt.MapClaims{"sub": "x", "exp": now.Add(time.Hour).Unix()}),
			401, "Unauthorized", "invalid token"},
		{"expired", "/instances", "Bearer " + signed(t, testSecret, jwt.MapClaims{"sub": "x", "exp": now.Add(-time.Hour).Unix()}),
			401, "Unauthorized", "invalid token"},
		{"registry token", "/instances", "Bearer " + signed(t, testSecret, jwt.MapClaims{"sub": "x", "repos": []string{"a"}, "exp": now.Add(time.Hour).Unix()}),
			401, "Unauthorized", "invalid token type"},
		{"unknown route needs a token first", "/nope", "", 401, "Unauthorized", "authorization header required"},
		{"capabilities are not public", "/capabilities", "", 401, "Unauthorized", "authorization header required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantError(t, e.do(t, "GET", tt.path, tt.authz, ""), tt.status, tt.code, tt.msg)
		})
	}

	t.Run("health is open", func(t *testing.T) {
		resp := e.do(t, "GET", "/health", "", "")
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"ok"`) {
			t.Errorf("health: %d %s", resp.StatusCode, b)
		}
	})
	t.Run("spec is open", func(t *testing.T) {
		resp := e.do(t, "GET", "/spec.yaml", "", "")
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(b), "openapi:") {
			t.Errorf("spec: %d %.80s", resp.StatusCode, b)
		}
	})
	t.Run("lowercase bearer and a valid token", func(t *testing.T) {
		resp := e.do(t, "GET", "/instances", "bearer "+e.token, "")
		if resp.StatusCode != 200 {
			t.Errorf("status %d", resp.StatusCode)
		}
	})
}

func TestValidationAndErrorsThroughTheStack(t *testing.T) {
	e := newAPIEnv(t)
	tests := []struct {
		name, method, path, body string
		status                   int
		code, msg                string
	}{
		{"unknown route", "GET", "/nope", "", 404, "Not Found", "no matching operation was found"},
		{"bad instance name", "POST", "/instances", `{"name":"Bad_Name","image":"alpine"}`, 400, "Bad Request", "name"},
		{"missing image", "POST", "/instances", `{"name":"ok"}`, 400, "Bad Request", "image"},
		{"not JSON", "POST", "/instances", `{"name":`, 400, "Bad Request", ""},
		{"bad state enum", "GET", "/instances/" + idOne + "/wait?state=Bogus", "", 400, "Bad Request", "state"},
		{"wait for Unknown", "GET", "/instances/" + idOne + "/wait?state=Unknown", "", 400, "invalid_state", "Unknown"},
		{"bad wait timeout", "GET", "/instances/" + idOne + "/wait?state=Running&timeout=-1s", "", 400, "invalid_timeout", "-1s"},
		{"no such instance", "GET", "/instances/zzz", "", 404, "not_found", "not found"},
		{"ambiguous prefix", "GET", "/instances/aaaa", "", 409, "ambiguous", "multiple resources match, use full ID"},
		{"stop a stopped instance", "POST", "/instances/inst-1/stop", "", 409, "invalid_state",
			"invalid state transition: cannot stop from state Stopped, must be Running or Initializing"},
		{"unsupported create field", "POST", "/instances",
			`{"name":"ok","image":"alpine","volumes":[{"volume_id":"v","mount_path":"/data"}]}`, 501, "not_supported", "volumes"},
		{"unimplemented endpoint", "GET", "/resources", "", 501, "not_implemented", "not implemented"},
		{"missing log file", "GET", "/instances/" + idOne + "/logs?source=vmm", "", 404, "log_not_found", "does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantError(t, e.do(t, tt.method, tt.path, "token", tt.body), tt.status, tt.code, tt.msg)
		})
	}
}

func TestInstanceReadsThroughTheStack(t *testing.T) {
	e := newAPIEnv(t)
	resp := e.do(t, "GET", "/instances/inst-2", "token", "")
	var inst map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&inst); err != nil || resp.StatusCode != 200 {
		t.Fatalf("get: %d %v", resp.StatusCode, err)
	}
	if inst["id"] != idTwo || inst["state"] != "Stopped" || inst["size"] != "64.0 MB" {
		t.Errorf("instance %v", inst)
	}

	resp = e.do(t, "GET", "/instances?state=Stopped", "token", "")
	var list []map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || len(list) != 2 {
		t.Errorf("list: %d %v %v", resp.StatusCode, err, list)
	}

	resp = e.do(t, "GET", "/instances/"+idOne+"/wait?state=Running&timeout=5s", "token", "")
	var wait map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&wait); err != nil || resp.StatusCode != 200 {
		t.Fatalf("wait: %d %v", resp.StatusCode, err)
	}
	if wait["state"] != "Stopped" || wait["timed_out"] != false {
		t.Errorf("wait on a stopped instance: %v, want Stopped at once", wait)
	}
}

func TestLogsSSEThroughTheStack(t *testing.T) {
	e := newAPIEnv(t)
	lines := "first\nsecond \"quoted\"\nthird \u00e9\t<tab>\n"
	if err := os.WriteFile(e.paths.InstanceAppLog(idOne), []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	resp := e.do(t, "GET", "/instances/inst-1/logs?tail=2", "token", "")
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	for h, want := range map[string]string{
		"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	want := "data: \"second \\\"quoted\\\"\"\n\ndata: \"third \u00e9\\t\\u003ctab\\u003e\"\n\n"
	if string(b) != want {
		t.Errorf("body:\n got %q\nwant %q", b, want)
	}
}

func TestLogStreamFraming(t *testing.T) {
	path := t.TempDir() + "/app.log"
	if err := os.WriteFile(path, []byte("a\n\nb \"c\"\nno newline at end"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		tail int
		want string
	}{
		{"all lines", 100, "data: \"a\"\n\ndata: \"\"\n\ndata: \"b \\\"c\\\"\"\n\ndata: \"no newline at end\"\n\n"},
		{"last line only", 1, "data: \"no newline at end\"\n\n"},
		{"no lines", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			err := logStream{ctx: context.Background(), path: path, tail: tt.tail}.VisitGetInstanceLogsResponse(w)
			if err != nil {
				t.Fatal(err)
			}
			if w.Code != 200 || w.Header().Get("Content-Type") != "text/event-stream" ||
				w.Header().Get("Cache-Control") != "no-cache" || w.Header().Get("X-Accel-Buffering") != "no" {
				t.Errorf("status %d headers %v", w.Code, w.Header())
			}
			if !w.Flushed {
				t.Error("headers not flushed before the first event")
			}
			if got := w.Body.String(); got != tt.want {
				t.Errorf("body:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// Following: lines appended later arrive as events; the stream ends when
// the request's context does.
func TestLogStreamFollow(t *testing.T) {
	path := t.TempDir() + "/app.log"
	if err := os.WriteFile(path, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	w := &pipeWriter{header: http.Header{}, w: pw}
	done := make(chan error, 1)
	go func() {
		done <- logStream{ctx: ctx, path: path, tail: 10, follow: true}.VisitGetInstanceLogsResponse(w)
		pw.Close()
	}()
	buf := make([]byte, 64)
	readEvent := func(want string) {
		t.Helper()
		n, err := io.ReadAtLeast(pr, buf, len(want))
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("read %q, %v; want %q", buf[:n], err, want)
		}
	}
	readEvent("data: \"old\"\n\n")
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("new\n")
	f.Close()
	readEvent("data: \"new\"\n\n")
	cancel()
	go io.Copy(io.Discard, pr)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("stream ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream did not end with its context")
	}
}

// pipeWriter is an http.ResponseWriter (and Flusher) writing to a pipe.
type pipeWriter struct {
	header http.Header
	w      io.Writer
}

func (p *pipeWriter) Header() http.Header         { return p.header }
func (p *pipeWriter) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p *pipeWriter) WriteHeader(int)             {}
func (p *pipeWriter) Flush()                      {}
