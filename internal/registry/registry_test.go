package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/hypeman-vm/hypeman/internal/images"
	"github.com/hypeman-vm/hypeman/internal/paths"
	"github.com/hypeman-vm/hypeman/internal/testimage"
)

const token = "test-jwt"

func checkToken(r *http.Request) bool { return r.Header.Get("Authorization") == "Bearer "+token }

type env struct {
	images  *images.Manager
	host    string // 127.0.0.1:port
	url     string
	uploads atomic.Int32 // blob upload requests (POST/PATCH/PUT on blobs/uploads)
}

// newEnv serves a registry over an image store in dir on loopback.
func newEnv(t *testing.T, dir string) *env {
	t.Helper()
	p, err := paths.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := images.New(images.Config{}, p, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	e := &env{images: m}
	reg := New(m, checkToken, log)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/uploads") {
			e.uploads.Add(1)
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	e.url = srv.URL
	e.host = strings.TrimPrefix(srv.URL, "http://")
	return e
}

// archive writes a docker-archive tarball of img and returns its path.
func archive(t *testing.T, img v1.Image) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img.tar")
	tag, _ := name.NewTag("hypeman/test:latest")
	if err := tarball.WriteToFile(p, tag, img); err != nil {
		t.Fatal(err)
	}
	return p
}

func busybox(t *testing.T) v1.Image {
	t.Helper()
	img, err := testimage.Busybox(context.Background(), testimage.DefaultCacheDir)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestPushBecomesReadyAndSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, dir)
	ctx := context.Background()
	target, _ := name.ParseReference(e.host + "/demo:v1")

	start := time.Now()
	digest, err := Push(ctx, archive(t, busybox(t)), target, token)
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.images.WaitReady(ctx, e.host+"/demo:v1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("push + convert: %v", time.Since(start))
	if img.Digest != digest || img.Name != e.host+"/demo:v1" {
		t.Fatalf("image %+v, pushed digest %s", img, digest)
	}
	if got, err := e.images.Get(ctx, e.host+"/demo:v1"); err != nil || got.Status != images.StatusReady {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	e.images.Close()

	// A new registry and store on the same data dir still serve the tag.
	e2 := newEnv(t, dir)
	ref, _ := name.ParseReference(e2.host+"/demo:v1", name.Insecure)
	desc, err := remote.Get(ref, remote.WithAuth(authn.FromConfig(authn.AuthConfig{RegistryToken: token})))
	if err != nil {
		t.Fatalf("pull after restart: %v", err)
	}
	if desc.Digest.String() != digest {
		t.Fatalf("pulled %s, pushed %s", desc.Digest, digest)
	}
	pulled, err := desc.Image()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pulled.Layers(); err != nil {
		t.Fatal(err)
	}
	if list, _ := e2.images.List(ctx, nil); len(list) != 1 || list[0].Status != images.StatusReady {
		t.Fatalf("images after restart: %+v", list)
	}
}

func TestUnauthorized(t *testing.T) {
	e := newEnv(t, t.TempDir())
	for _, path := range []string{"/v2/", "/v2/demo/manifests/v1", "/v2/demo/blobs/uploads/"} {
		resp, err := http.Get(e.url + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: status %d", path, resp.StatusCode)
		}
		want := fmt.Sprintf(`Bearer realm="http://%s/v2/token",service="hypeman"`, e.host)
		if got := resp.Header.Get("WWW-Authenticate"); got != want {
			t.Errorf("%s: WWW-Authenticate %q, want %q", path, got, want)
		}
		if strings.TrimSpace(string(body)) != `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}` {
			t.Errorf("%s: body %s", path, body)
		}
	}
	// Push without credentials fails.
	target, _ := name.ParseReference(e.host + "/demo:v1")
	if _, err := Push(context.Background(), archive(t, busybox(t)), target, "wrong"); err == nil {
		t.Error("push with a bad token succeeded")
	}
}

func TestTokenEndpoint(t *testing.T) {
	e := newEnv(t, t.TempDir())
	cases := []struct {
		name       string
		set        func(*http.Request)
		wantStatus int
	}{
		{"basic with token as password", func(r *http.Request) { r.SetBasicAuth("x", token) }, 200},
		{"basic with token as user", func(r *http.Request) { r.SetBasicAuth(token, "") }, 200},
		{"bearer", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }, 200},
		{"bad password", func(r *http.Request) { r.SetBasicAuth("x", "nope") }, 401},
		{"none", func(*http.Request) {}, 401},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, e.url+"/v2/token?service=hypeman&scope=repository:demo:push,pull", nil)
			tc.set(req)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.wantStatus != 200 {
				return
			}
			var body struct {
				Token       string `json:"token"`
				AccessToken string `json:"access_token"`
			}
			json.NewDecoder(resp.Body).Decode(&body)
			if body.Token != token || body.AccessToken != token {
				t.Errorf("token = %q", body.Token)
			}
		})
	}
}

func TestRePushSkipsExistingBlobs(t *testing.T) {
	e := newEnv(t, t.TempDir())
	ctx := context.Background()
	src := archive(t, busybox(t))
	first, _ := name.ParseReference(e.host + "/a:v1")
	if _, err := Push(ctx, src, first, token); err != nil {
		t.Fatal(err)
	}
	if e.uploads.Load() == 0 {
		t.Fatal("first push uploaded nothing")
	}
	e.uploads.Store(0)
	second, _ := name.ParseReference(e.host + "/b:v2")
	if _, err := Push(ctx, src, second, token); err != nil {
		t.Fatal(err)
	}
	if n := e.uploads.Load(); n != 0 {
		t.Errorf("re-push made %d upload requests, want 0 (blobs already present)", n)
	}
	img, _ := tarball.ImageFromPath(src, nil)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	resp := do(t, e, http.MethodHead, "/v2/b/blobs/"+d.String(), nil, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != d.String() || resp.ContentLength <= 0 {
		t.Errorf("HEAD existing blob: %d %v", resp.StatusCode, resp.Header)
	}
	if _, err := e.images.WaitReady(ctx, e.host+"/b:v2", time.Minute); err != nil {
		t.Fatal(err)
	}
}

// do sends an authenticated request to the registry.
func do(t *testing.T, e *env, method, path string, body []byte, hdr map[string]string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestChunkedUploadAndErrors(t *testing.T) {
	e := newEnv(t, t.TempDir())
	data := bytes.Repeat([]byte("0123456789"), 1000)

	resp := do(t, e, http.MethodPost, "/v2/c/blobs/uploads/", nil, nil)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("POST: %d %q", resp.StatusCode, loc)
	}
	resp = do(t, e, http.MethodPatch, loc, data[:4000], map[string]string{"Content-Range": "0-3999"})
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Range") != "0-3999" {
		t.Fatalf("PATCH 1: %d range %q", resp.StatusCode, resp.Header.Get("Range"))
	}
	if resp = do(t, e, http.MethodPatch, loc, data[4000:], map[string]string{"Content-Range": "10-20"}); resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("PATCH with a gap: %d, want 416", resp.StatusCode)
	}
	do(t, e, http.MethodPatch, loc, data[4000:9000], map[string]string{"Content-Range": "4000-8999"})
	if resp = do(t, e, http.MethodPut, loc+"?digest="+sha(data), data[9000:], nil); resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT: %d", resp.StatusCode)
	}
	resp = do(t, e, http.MethodGet, "/v2/c/blobs/"+sha(data), nil, map[string]string{"Range": "bytes=10-19"})
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusPartialContent || string(got) != "0123456789" {
		t.Errorf("ranged GET: %d %q", resp.StatusCode, got)
	}

	// Monolithic upload with a wrong digest.
	resp = do(t, e, http.MethodPost, "/v2/c/blobs/uploads/?digest="+sha([]byte("other")), []byte("content"), nil)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(readAll(resp), "DIGEST_INVALID") {
		t.Errorf("wrong digest: %d", resp.StatusCode)
	}
	// A manifest naming a blob the registry lacks.
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":7},"layers":[]}`, sha([]byte("missing")))
	resp = do(t, e, http.MethodPut, "/v2/c/manifests/v1", []byte(manifest), map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(readAll(resp), "MANIFEST_BLOB_UNKNOWN") {
		t.Errorf("manifest with missing blob: %d", resp.StatusCode)
	}
	if resp = do(t, e, http.MethodGet, "/v2/c/manifests/nope", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown manifest: %d", resp.StatusCode)
	}
	if resp = do(t, e, http.MethodGet, "/v2/c/blobs/"+sha([]byte("nope")), nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown blob: %d", resp.StatusCode)
	}
}

func readAll(r *http.Response) string {
	b, _ := io.ReadAll(r.Body)
	return string(b)
}

func TestTagsList(t *testing.T) {
	e := newEnv(t, t.TempDir())
	ctx := context.Background()
	src := archive(t, busybox(t))
	for _, tag := range []string{"v2", "v1"} {
		target, _ := name.ParseReference(e.host + "/tags/repo:" + tag)
		if _, err := Push(ctx, src, target, token); err != nil {
			t.Fatal(err)
		}
	}
	resp := do(t, e, http.MethodGet, "/v2/tags/repo/tags/list", nil, nil)
	if got := strings.TrimSpace(readAll(resp)); got != `{"name":"tags/repo","tags":["v1","v2"]}` {
		t.Errorf("tags list = %s", got)
	}
}

// TestSkopeoCopy pushes with skopeo, a third-party client that authenticates
// through the token endpoint with Basic credentials.
func TestSkopeoCopy(t *testing.T) {
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Skip("skopeo not installed")
	}
	e := newEnv(t, t.TempDir())
	src := archive(t, busybox(t))
	out, err := exec.Command("skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false",
		"--dest-creds", "x:"+token, "docker-archive:"+src, "docker://"+e.host+"/demo:v1").CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	img, err := e.images.WaitReady(context.Background(), e.host+"/demo:v1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", "x:"+token, "docker://"+e.host+"/demo:v1").CombinedOutput()
	if err != nil || sha(out) != img.Digest {
		t.Fatalf("skopeo inspect: %v, digest %s, image %s\n%s", err, sha(out), img.Digest, out)
	}
}
