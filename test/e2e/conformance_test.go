package e2e

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// conformanceDir is the SDK conformance suite, relative to this package.
const conformanceDir = "../conformance"

// sdkPrefix starts the name of every instance and image tag the suite makes.
const sdkPrefix = "sdk-"

// TestSDKConformance drives the shared daemon with the official TypeScript
// SDK (test/conformance/conformance.mjs) and fails if any check fails.
func TestSDKConformance(t *testing.T) {
	t.Parallel()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found in PATH: install Node.js 20 (make setup)")
	}
	sdk := filepath.Join(conformanceDir, "node_modules", "@onkernel", "hypeman", "package.json")
	if _, err := os.Stat(sdk); err != nil {
		t.Fatalf("%s missing: run `npm ci --prefix test/conformance` from the repository root first "+
			"(the npm registry is not reachable from the test's network namespace)", sdk)
	}
	d, img := shared(t)
	t.Cleanup(func() { cleanupSDK(t, d) })

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "test/conformance/conformance.mjs")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(),
		"HYPEMAN_BASE_URL=http://"+d.addr,
		"HYPEMAN_API_KEY="+d.token,
		"HYPEMAN_IMAGE="+img,
		"NODE_OPTIONS=",
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		t.Log(sc.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("SDK conformance suite failed: %v (see the ok/FAIL lines above)\ndaemon log:\n%s", err, d.log())
	}
}

// cleanupSDK deletes every instance and image tag the suite made, also when
// it failed half way.
func cleanupSDK(t *testing.T, d *daemon) {
	var list []instance
	if st, raw := d.do("GET", "/instances", nil, &list); st != 200 {
		t.Logf("cleanup: list instances: %d %s", st, raw)
	}
	for _, in := range list {
		if strings.HasPrefix(in.Name, sdkPrefix) {
			if st, raw := d.do("DELETE", "/instances/"+in.ID+"?graceful_shutdown=false", nil, nil); st != 204 && st != 404 {
				t.Errorf("cleanup: delete instance %s: %d %s", in.Name, st, raw)
			}
		}
	}
	var imgs []struct {
		Name string `json:"name"`
	}
	d.do("GET", "/images", nil, &imgs)
	for _, im := range imgs {
		if strings.Contains(im.Name, "/"+sdkPrefix) {
			d.do("DELETE", "/images/"+escapeRef(im.Name), nil, nil)
		}
	}
}
