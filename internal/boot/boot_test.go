package boot

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildSmokeInit compiles testdata/bootsmoke, a static PID 1 that loads
// the modules in load-order and prints "BOOT-OK <n> modules".
func buildSmokeInit(t *testing.T) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "init")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./testdata/bootsmoke")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build guest init: %v\n%s", err, msg)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// bootQEMU boots vmlinuz with initrd under TCG and returns the serial
// console output and the wall time until QEMU exited.
func bootQEMU(ctx context.Context, t *testing.T, k Kernel, initrd string) (string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-machine", "q35", "-accel", "tcg", "-m", "512",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
		"-kernel", k.Vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet",
		"-no-reboot", "-device", "virtio-serial-pci")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("guest did not power off within 60 s; console:\n%s", out.String())
	}
	if err != nil {
		t.Fatalf("qemu: %v; console:\n%s", err, out.String())
	}
	return out.String(), wall
}

func TestBootSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM under emulation")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("needs qemu-system-x86_64")
	}
	k := testKernel(t)
	p := tempPaths(t)
	guest := buildSmokeInit(t)
	initrd, err := BuildInitrd(t.Context(), p, k, guest)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(initrd)
	mods, _ := ResolveModules(k.ModulesDir, GuestModules())
	want := fmt.Sprintf("BOOT-OK %d modules", len(mods))
	t.Logf("kernel %s, initramfs %d bytes (init %d bytes, %d modules)", k.Version, st.Size(), len(guest), len(mods))
	for i := range 2 {
		console, wall := bootQEMU(t.Context(), t, k, initrd)
		if !strings.Contains(console, want) {
			t.Fatalf("boot %d: console lacks %q:\n%s", i+1, want, console)
		}
		t.Logf("boot %d: %q in %v wall; console:\n%s", i+1, want, wall.Round(time.Millisecond), strings.TrimSpace(console))
	}
}
