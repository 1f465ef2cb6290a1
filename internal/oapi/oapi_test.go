package oapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
)

func TestSpecLoadsAndValidates(t *testing.T) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(SpecYAML())
	if err != nil {
		t.Fatalf("load spec: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("validate spec: %v", err)
	}
	if got, want := doc.Info.Version, "0.3.0"; got != want {
		t.Errorf("info.version = %q, want %q", got, want)
	}
	if got, want := doc.Servers[0].URL, "http://localhost:4973"; got != want {
		t.Errorf("servers[0].url = %q, want %q", got, want)
	}
	health := doc.Paths.Find("/health").Get
	if health.Security == nil || len(*health.Security) != 0 {
		t.Errorf("/health must declare an empty security list, got %v", health.Security)
	}
	if len(doc.Security) != 1 || doc.Security[0]["bearerAuth"] == nil {
		t.Errorf("global security = %v, want bearerAuth", doc.Security)
	}

	// The embedded, parsed copy must describe the same document.
	swagger, err := GetSwagger()
	if err != nil {
		t.Fatalf("GetSwagger: %v", err)
	}
	if err := swagger.Validate(context.Background()); err != nil {
		t.Fatalf("validate embedded spec: %v", err)
	}
	if len(swagger.Paths.Map()) != len(doc.Paths.Map()) {
		t.Errorf("embedded spec has %d paths, raw YAML has %d", len(swagger.Paths.Map()), len(doc.Paths.Map()))
	}
}

// api/openapi.yaml is a symlink to the canonical file in this package; a
// dangling link or a stale copy in its place would go unnoticed otherwise.
func TestAPISpecIsSameDocument(t *testing.T) {
	p := filepath.Join("..", "..", "api", "openapi.yaml")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	if !bytes.Equal(b, SpecYAML()) {
		t.Fatalf("%s differs from internal/oapi/openapi.yaml", p)
	}
}

func TestInstanceJSON(t *testing.T) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	inst := Instance{
		Id:        "tz4a98xxat96iws9zmbrgj3a",
		Name:      "web",
		Image:     "docker.io/library/alpine:latest",
		State:     InstanceStateRunning,
		CreatedAt: created,
	}
	b, err := json.Marshal(inst)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	if got := string(fields["expires_at"]); got != "null" {
		t.Errorf("expires_at = %s, want null (json: %s)", got, b)
	}
	want := map[string]string{
		"id":         `"tz4a98xxat96iws9zmbrgj3a"`,
		"name":       `"web"`,
		"image":      `"docker.io/library/alpine:latest"`,
		"state":      `"Running"`,
		"created_at": `"2026-01-02T03:04:05Z"`,
		"expires_at": `null`,
	}
	for k, v := range want {
		if got := string(fields[k]); got != v {
			t.Errorf("%s = %s, want %s", k, got, v)
		}
	}
	for k := range fields {
		if _, ok := want[k]; !ok {
			t.Errorf("unset optional field %q was emitted: %s", k, fields[k])
		}
	}

	// Set optional fields appear; empty maps and slices still do not.
	exp := created.Add(time.Hour)
	size := "1024.0 MB"
	inst.ExpiresAt = &exp
	inst.Size = &size
	inst.Env = map[string]string{}
	inst.Volumes = []VolumeMount{}
	b, err = json.Marshal(inst)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, sub := range []string{`"expires_at":"2026-01-02T04:04:05Z"`, `"size":"1024.0 MB"`} {
		if !strings.Contains(s, sub) {
			t.Errorf("json %s lacks %s", s, sub)
		}
	}
	for _, k := range []string{`"env"`, `"volumes"`, `"tags"`} {
		if strings.Contains(s, k) {
			t.Errorf("json %s has empty field %s", s, k)
		}
	}

	var back Instance
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.ExpiresAt == nil || !back.ExpiresAt.Equal(exp) || back.Size == nil || *back.Size != size {
		t.Errorf("round trip lost fields: %+v", back)
	}
}

// recorder implements the strict interface for the operations the tests
// call and records what the generated wrapper decoded. The embedded nil
// interface makes any other operation panic, which fails the test loudly.
type recorder struct {
	StrictServerInterface

	mu        sync.Mutex
	imageName string
	tagTarget string
	tags      Tags
	state     *InstanceState
	startBody *StartInstanceRequest
	started   bool
}

func (r *recorder) GetImage(_ context.Context, req GetImageRequestObject) (GetImageResponseObject, error) {
	r.mu.Lock()
	r.imageName = req.Name
	r.mu.Unlock()
	return GetImage200JSONResponse{
		Name:      req.Name,
		Digest:    "sha256:0000000000000000000000000000000000000000000000000000000000000000",
		Status:    ImageStatusReady,
		CreatedAt: time.Unix(0, 0).UTC(),
	}, nil
}

func (r *recorder) DeleteImage(_ context.Context, req DeleteImageRequestObject) (DeleteImageResponseObject, error) {
	r.mu.Lock()
	r.imageName = req.Name
	r.mu.Unlock()
	return DeleteImage204Response{}, nil
}

func (r *recorder) TagImage(_ context.Context, req TagImageRequestObject) (TagImageResponseObject, error) {
	r.mu.Lock()
	r.imageName = req.Name
	r.tagTarget = req.Body.Target
	r.mu.Unlock()
	return TagImage404JSONResponse{NotFoundJSONResponse{Code: "not_found", Message: "image not found"}}, nil
}

func (r *recorder) ListInstances(_ context.Context, req ListInstancesRequestObject) (ListInstancesResponseObject, error) {
	r.mu.Lock()
	r.tags = req.Params.Tags
	r.state = req.Params.State
	r.mu.Unlock()
	return ListInstances200JSONResponse{}, nil
}

func (r *recorder) StartInstance(_ context.Context, req StartInstanceRequestObject) (StartInstanceResponseObject, error) {
	r.mu.Lock()
	r.startBody = req.Body
	r.started = true
	r.mu.Unlock()
	return StartInstance409JSONResponse{ConflictJSONResponse{Code: "invalid_state", Message: "cannot start"}}, nil
}

func newTestServer(t *testing.T) (*recorder, *httptest.Server) {
	t.Helper()
	rec := &recorder{}
	srv := httptest.NewServer(Handler(NewStrictHandler(rec, nil)))
	t.Cleanup(srv.Close)
	return rec, srv
}

func TestImageNamePathDecoding(t *testing.T) {
	const want = "docker.io/library/alpine:latest"
	cases := []struct {
		name, method, target, body string
		status                     int
	}{
		// Exactly what the TS SDK sends: '/' escaped, ':' raw.
		{"get sdk form", http.MethodGet, "/images/docker.io%2Flibrary%2Falpine:latest", "", 200},
		{"get fully escaped", http.MethodGet, "/images/docker.io%2Flibrary%2Falpine%3Alatest", "", 200},
		{"delete", http.MethodDelete, "/images/docker.io%2Flibrary%2Falpine:latest", "", 204},
		{"tag subpath", http.MethodPost, "/images/docker.io%2Flibrary%2Falpine:latest/tag", `{"target":"x/y:z"}`, 404},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			h := Handler(NewStrictHandler(rec, nil))
			req := httptest.NewRequest(tc.method, tc.target, strings.NewReader(tc.body))
			if req.URL.RawPath == "" {
				t.Fatalf("test request has no raw path; %%2F was not preserved")
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != tc.status {
				t.Fatalf("status = %d, want %d; body %s", w.Code, tc.status, w.Body)
			}
			if rec.imageName != want {
				t.Errorf("handler got name %q, want %q", rec.imageName, want)
			}
		})
	}
}

// The same request over a real TCP connection, with the request line written
// by hand so that nothing on the client side re-encodes the path.
func TestImageNameOverTheWire(t *testing.T) {
	rec, srv := newTestServer(t)
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /images/docker.io%%2Flibrary%%2Falpine:latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var img Image
	if err := json.NewDecoder(resp.Body).Decode(&img); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || img.Name != "docker.io/library/alpine:latest" || rec.imageName != img.Name {
		t.Fatalf("status %d, image %q, handler saw %q", resp.StatusCode, img.Name, rec.imageName)
	}
}

// The generated client must escape the name the same way, so our CLI and the
// SDK hit the same route.
func TestClientImageName(t *testing.T) {
	rec, srv := newTestServer(t)
	c, err := NewClientWithResponses(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.GetImageWithResponse(context.Background(), "docker.io/library/alpine:latest")
	if err != nil {
		t.Fatal(err)
	}
	if resp.JSON200 == nil || resp.JSON200.Name != "docker.io/library/alpine:latest" {
		t.Fatalf("status %d, body %s", resp.StatusCode(), resp.Body)
	}
	if rec.imageName != "docker.io/library/alpine:latest" {
		t.Errorf("handler got %q", rec.imageName)
	}
	tagResp, err := c.TagImageWithResponse(context.Background(), "a/b:c", TagImageJSONRequestBody{Target: "a/b:d"})
	if err != nil {
		t.Fatal(err)
	}
	if tagResp.JSON404 == nil || tagResp.JSON404.Code != "not_found" {
		t.Fatalf("tag: status %d, body %s", tagResp.StatusCode(), tagResp.Body)
	}
	if rec.imageName != "a/b:c" || rec.tagTarget != "a/b:d" {
		t.Errorf("tag handler got name %q target %q", rec.imageName, rec.tagTarget)
	}
}

func TestTagsDeepObjectQuery(t *testing.T) {
	rec, srv := newTestServer(t)

	// The SDK's form: brackets percent-encoded by qs.
	resp, err := http.Get(srv.URL + "/instances?tags%5Bteam%5D=backend&tags%5Benv%5D=staging&state=Running")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	if rec.tags["team"] != "backend" || rec.tags["env"] != "staging" || len(rec.tags) != 2 {
		t.Errorf("tags = %v", rec.tags)
	}
	if rec.state == nil || *rec.state != InstanceStateRunning {
		t.Errorf("state = %v", rec.state)
	}

	// No filter at all: nil tags, nil state.
	c, err := NewClientWithResponses(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListInstancesWithResponse(context.Background(), &ListInstancesParams{}); err != nil {
		t.Fatal(err)
	}
	if rec.tags != nil || rec.state != nil {
		t.Errorf("empty filter decoded as tags=%v state=%v", rec.tags, rec.state)
	}

	// The generated client sends the same shape.
	var gotQuery string
	editor := func(_ context.Context, req *http.Request) error { gotQuery = req.URL.RawQuery; return nil }
	if _, err := c.ListInstancesWithResponse(context.Background(), &ListInstancesParams{Tags: Tags{"team": "backend"}}, editor); err != nil {
		t.Fatal(err)
	}
	if gotQuery != "tags[team]=backend" && gotQuery != "tags%5Bteam%5D=backend" {
		t.Errorf("client query = %q", gotQuery)
	}
	if rec.tags["team"] != "backend" || len(rec.tags) != 1 {
		t.Errorf("tags via client = %v", rec.tags)
	}
}

func TestOptionalStartBody(t *testing.T) {
	cases := []struct {
		name     string
		body     string
		wantBody bool
	}{
		{"no body", "", false},
		{"empty object", "{}", true},
		{"overrides", `{"cmd":["sleep","1"]}`, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec, srv := newTestServer(t)
			resp, err := http.Post(srv.URL+"/instances/abc/start", "application/json", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			var e Error
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if !rec.started || resp.StatusCode != 409 || e.Code != "invalid_state" {
				t.Fatalf("handler called %v, status %d, error %+v", rec.started, resp.StatusCode, e)
			}
			if (rec.startBody != nil) != tc.wantBody {
				t.Errorf("body = %+v, want present=%v", rec.startBody, tc.wantBody)
			}
		})
	}
}
