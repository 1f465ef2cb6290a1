package boot

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hypeman-vm/hypeman/internal/paths"
)

// testDataDir is a data dir that outlives test runs, so that the guest
// kernel is downloaded once per machine rather than once per run.
func testDataDir() string {
	if d := os.Getenv("HYPEMAN_TEST_DATA_DIR"); d != "" {
		return d
	}
	return "/var/tmp/hypeman-test-data"
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func tempPaths(t *testing.T) *paths.Paths {
	t.Helper()
	p, err := paths.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	kernelOnce sync.Once
	kernelVal  Kernel
	kernelErr  error
)

// testKernel installs (first run) or finds the real Debian cloud kernel in
// the persistent test data dir.
func testKernel(t *testing.T) Kernel {
	t.Helper()
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s to fetch the Debian guest kernel", tool)
		}
	}
	kernelOnce.Do(func() {
		var p *paths.Paths
		if p, kernelErr = paths.New(testDataDir()); kernelErr != nil {
			return
		}
		kernelVal, kernelErr = EnsureKernel(t.Context(), p, testLogger(t))
	})
	if kernelErr != nil {
		t.Fatalf("EnsureKernel: %v", kernelErr)
	}
	return kernelVal
}

// fakePackage lays out k like an unpacked linux-image package under dir.
func fakePackage(t *testing.T, k Kernel, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "root")
	if err := copyFile(k.Vmlinuz, filepath.Join(root, "boot", "vmlinuz-"+k.Version)); err != nil {
		t.Fatal(err)
	}
	modDir := filepath.Join(root, "lib", "modules", k.Version)
	if err := os.MkdirAll(filepath.Dir(modDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("cp", "-a", k.ModulesDir, modDir).Run(); err != nil {
		t.Fatal(err)
	}
	return root
}
