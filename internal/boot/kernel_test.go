package boot

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/paths"
)

func TestParseDepends(t *testing.T) {
	tests := []struct {
		name, out, want string
	}{
		{"plain", "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n", "linux-image-6.1.0-57-cloud-amd64"},
		{"alternatives and virtual", "linux-image-amd64\n |Depends: <linux-image-6.1.0-9-amd64-virtual>\n  Depends: linux-image-6.1.0-9-amd64\n  Recommends: firmware\n", "linux-image-6.1.0-9-amd64"},
		{"other depends first", "x\n  Depends: initramfs-tools\n  Depends: linux-image-6.12.3+deb13-cloud-amd64\n", "linux-image-6.12.3+deb13-cloud-amd64"},
		{"no kernel", "x\n  Depends: kmod\n  Breaks: linux-image-6.1.0-1-cloud-amd64\n", ""},
		{"metapackage itself", "x\n  Depends: linux-image-cloud-amd64\n", ""},
		{"empty", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseDepends([]byte(tc.out)); got != tc.want {
				t.Fatalf("parseDepends = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCompareVersions(t *testing.T) {
	in := []string{"6.1.0-57-cloud-amd64", "6.1.0-9-cloud-amd64", "6.12.1-1-cloud-amd64", "6.1.0-57-cloud-amd64a"}
	slices.SortFunc(in, compareVersions)
	want := []string{"6.1.0-9-cloud-amd64", "6.1.0-57-cloud-amd64", "6.1.0-57-cloud-amd64a", "6.12.1-1-cloud-amd64"}
	if !slices.Equal(in, want) {
		t.Fatalf("sorted = %v", in)
	}
}

func TestEnsureKernelFindsInstalled(t *testing.T) {
	k := testKernel(t)
	p := kernelPaths(t)
	start := time.Now()
	got, err := EnsureKernel(t.Context(), p, testLogger(t))
	if err != nil || got != k {
		t.Fatalf("EnsureKernel = %+v, %v; want %+v", got, err, k)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("finding an installed kernel took %v", d)
	}
	got, err = EnsureKernel(t.Context(), p, testLogger(t), WithVersion(k.Version))
	if err != nil || got != k {
		t.Fatalf("EnsureKernel(WithVersion) = %+v, %v", got, err)
	}
}

// TestEnsureKernelConcurrent installs into a fresh data dir from several
// goroutines at once; the package fetch (replaced by a copy of the real
// kernel package's tree) must run once and every caller must get the same
// complete kernel.
func TestEnsureKernelConcurrent(t *testing.T) {
	k := testKernel(t)
	p := tempPaths(t)
	var fetches atomic.Int32
	fetch := func(ctx context.Context, log *slog.Logger, pkg, dir string) (string, error) {
		fetches.Add(1)
		if pkg != "linux-image-"+k.Version {
			t.Errorf("fetch package %q", pkg)
		}
		time.Sleep(50 * time.Millisecond) // widen the race window
		return fakePackage(t, k, dir), nil
	}
	const callers = 4
	results := make([]Kernel, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			results[i], errs[i] = EnsureKernel(t.Context(), p, testLogger(t),
				WithVersion(k.Version), func(o *options) { o.fetch = fetch })
		})
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if results[i] != results[0] {
			t.Fatalf("caller %d got %+v, caller 0 %+v", i, results[i], results[0])
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("fetched %d times, want 1", n)
	}
	got := results[0]
	if got.Version != k.Version || got.Vmlinuz != filepath.Join(p.KernelDir(k.Version), "vmlinuz") {
		t.Fatalf("kernel = %+v", got)
	}
	mods, err := ResolveModules(got.ModulesDir, GuestModules())
	if err != nil || len(mods) == 0 {
		t.Fatalf("installed modules: %d, %v", len(mods), err)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(p.KernelDir("x")), ".fetch-*"))
	if len(left) != 0 {
		t.Fatalf("work dirs left behind: %v", left)
	}
}

func TestEnsureKernelStaleFetchRemoved(t *testing.T) {
	k := testKernel(t)
	p := tempPaths(t)
	stale := filepath.Join(filepath.Dir(p.KernelDir("x")), ".fetch-123")
	if err := os.MkdirAll(filepath.Join(stale, "root"), 0o755); err != nil {
		t.Fatal(err)
	}
	fetch := func(ctx context.Context, log *slog.Logger, pkg, dir string) (string, error) {
		return fakePackage(t, k, dir), nil
	}
	if _, err := EnsureKernel(t.Context(), p, testLogger(t), WithVersion(k.Version),
		func(o *options) { o.fetch = fetch }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale work dir still there: %v", err)
	}
}

func TestEnsureKernelOverride(t *testing.T) {
	k := testKernel(t)
	p := tempPaths(t)
	got, err := EnsureKernel(t.Context(), p, testLogger(t),
		WithOverride(KernelOverride{Vmlinuz: k.Vmlinuz, ModulesDir: k.ModulesDir}))
	if err != nil || got != k {
		t.Fatalf("override = %+v, %v; want %+v", got, err, k)
	}
	bad := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(bad, make([]byte, 4096), 0o644)
	_, err = EnsureKernel(t.Context(), p, testLogger(t),
		WithOverride(KernelOverride{Vmlinuz: bad, ModulesDir: k.ModulesDir}))
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad vmlinuz: err = %v", err)
	}
	if _, err := os.Stat(p.SystemDir()); !os.IsNotExist(err) {
		t.Fatalf("override installed something: %v", err)
	}
}

func kernelPaths(t *testing.T) *paths.Paths {
	t.Helper()
	p, err := paths.New(testDataDir())
	if err != nil {
		t.Fatal(err)
	}
	return p
}
