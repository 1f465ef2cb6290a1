package images

import (
	"context"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/hypeman-vm/hypeman/internal/paths"
	"github.com/hypeman-vm/hypeman/internal/testimage"
)

// testRegistry is an in-process go-containerregistry registry on loopback.
// While gated, blob GETs wait until the gate opens.
type testRegistry struct {
	host string

	mu   sync.Mutex
	gate chan struct{} // guarded by mu; nil when open
}

func newTestRegistry(t *testing.T) *testRegistry {
	t.Helper()
	tr := &testRegistry{}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			tr.wait(r.Context())
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(tr.open) // runs before srv.Close: release blocked handlers
	tr.host = strings.TrimPrefix(srv.URL, "http://")
	return tr
}

func (tr *testRegistry) close() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.gate == nil {
		tr.gate = make(chan struct{})
	}
}

func (tr *testRegistry) open() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.gate != nil {
		close(tr.gate)
		tr.gate = nil
	}
}

func (tr *testRegistry) wait(ctx context.Context) {
	tr.mu.Lock()
	g := tr.gate
	tr.mu.Unlock()
	if g != nil {
		select {
		case <-g:
		case <-ctx.Done():
		}
	}
}

// push writes img to the registry as repoTag and returns the full reference.
func (tr *testRegistry) push(t *testing.T, repoTag string, img v1.Image) string {
	t.Helper()
	ref := tr.host + "/" + repoTag
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// busybox returns the test busybox image, built once per test binary.
var busybox = sync.OnceValues(func() (v1.Image, error) {
	return testimage.Busybox(context.Background(), testimage.DefaultCacheDir)
})

func busyboxImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := busybox()
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// variant returns busybox with an extra env var, so it has its own digest.
func variant(t *testing.T, tag string) v1.Image {
	t.Helper()
	img := busyboxImage(t)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config
	cfg.Env = append(append([]string(nil), cfg.Env...), "VARIANT="+tag)
	out, err := mutate.Config(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func newManager(t *testing.T, dir string, cfg Config) *Manager {
	t.Helper()
	p, err := paths.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(cfg, p, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func waitReady(t *testing.T, m *Manager, ref string, timeout time.Duration) Image {
	t.Helper()
	img, err := m.WaitReady(context.Background(), ref, timeout)
	if err != nil {
		t.Fatalf("WaitReady(%s): %v", ref, err)
	}
	return img
}

// dumpErofs returns dump.erofs's description of path inside image.
func dumpErofs(t *testing.T, image, path string) string {
	t.Helper()
	out, err := exec.Command("dump.erofs", "--path="+path, image).CombinedOutput()
	if err != nil {
		t.Fatalf("dump.erofs %s: %v: %s", path, err, out)
	}
	return string(out)
}

// fsckExtract checks image with fsck.erofs and extracts it to a new
// directory, which it returns.
func fsckExtract(t *testing.T, image string) string {
	t.Helper()
	dir := t.TempDir() + "/x"
	if out, err := exec.Command("fsck.erofs", "--extract="+dir, image).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs: %v: %s", err, out)
	}
	return dir
}
