package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/hypeman-vm/hypeman/internal/testimage"
)

// Environment passed from the outer run to the inner one.
const (
	envNetns   = "HYPEMAN_E2E_NETNS"
	envKernel  = "HYPEMAN_E2E_KERNEL"
	envModules = "HYPEMAN_E2E_MODULES"
	envImages  = "HYPEMAN_E2E_IMAGES"
	envBin     = "HYPEMAN_E2E_BIN"
)

// cacheDir keeps downloads and built images between runs.
const cacheDir = "/var/cache/hypeman-test"

func TestMain(m *testing.M) {
	if os.Getenv(envNetns) != "" {
		os.Exit(inner(m))
	}
	os.Exit(outer(m))
}

// outer prepares kernel and images, then re-runs this binary in a fresh
// network namespace and removes the namespace afterwards.
func outer(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipped: needs root (network namespaces, TAP devices); run `make test` as root")
		return 0
	}
	bin, err := hypemanBinary()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	env, err := prepare(bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: prepare:", err)
		return 1
	}
	fenv, cleanup, err := freezeEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: data dir root:", err)
		return 1
	}
	defer cleanup()
	env = append(env, fenv...)
	ns := fmt.Sprintf("hme2e-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: ip netns add: %v: %s\n", err, out)
		return 1
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	_ = exec.Command("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up").Run()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, os.Args...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), append(env, envNetns+"="+ns, envBin+"="+bin)...)
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	return 0
}

func inner(m *testing.M) int {
	code := m.Run()
	stopAllDaemons()
	return code
}

// hypemanBinary finds bin/hypeman at the repository root.
func hypemanBinary() (string, error) {
	if p := os.Getenv("HYPEMAN_BIN"); p != "" {
		return filepath.Abs(p)
	}
	p, err := filepath.Abs("../../bin/hypeman")
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found: run `make build` first", p)
	}
	return p, nil
}

// prepare installs the guest kernel into a shared cache (with `hypeman
// setup`) and builds the test images as docker-archive tarballs. It returns
// environment entries for the inner run.
func prepare(bin string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	setupDir := filepath.Join(cacheDir, "setup")
	cmd := exec.CommandContext(ctx, bin, "setup")
	cmd.Env = append(os.Environ(), "HYPEMAN_DATA_DIR="+setupDir)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("hypeman setup: %w", err)
	}
	info := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " "); ok {
			info[k] = v
		}
	}
	imagesDir := filepath.Join(cacheDir, "images")
	if err := os.MkdirAll(imagesDir, 0o755); err != nil {
		return nil, err
	}
	if err := buildImages(ctx, imagesDir); err != nil {
		return nil, err
	}
	return []string{envKernel + "=" + info["vmlinuz"], envModules + "=" + info["modules"], envImages + "=" + imagesDir}, nil
}

func buildImages(ctx context.Context, dir string) error {
	bb, err := testimage.Busybox(ctx, cacheDir)
	if err != nil {
		return err
	}
	if err := writeTar(filepath.Join(dir, "busybox.tar"), "hypeman/busybox:latest", bb); err != nil {
		return err
	}
	deb, err := testimage.Debian(ctx, cacheDir, "", []string{"nginx-light"})
	if err != nil {
		return err
	}
	return writeTar(filepath.Join(dir, "nginx.tar"), "hypeman/nginx:latest", deb)
}

func writeTar(path, tag string, img v1.Image) error {
	t, err := name.NewTag(tag)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := tarball.WriteToFile(tmp, t, img); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// imageTar returns the path of a prepared test image tarball.
func imageTar(t testing.TB, name string) string {
	t.Helper()
	return filepath.Join(os.Getenv(envImages), name+".tar")
}
