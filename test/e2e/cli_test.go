package e2e

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestCLI drives the daemon through the hypeman command line, as a user
// following the README would.
func TestCLI(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	run := func(args ...string) string {
		t.Helper()
		out, err := d.cli(t, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	id := strings.TrimSpace(run("run", "--name", "cli-web", "-e", "WHO=cli", img))
	t.Cleanup(func() { d.cli(t, "rm", "-f", id) })
	if len(id) != 24 {
		t.Fatalf("run printed %q, want the instance ID", id)
	}
	if ps := run("ps"); !strings.Contains(ps, "cli-web") || !strings.Contains(ps, "Running") {
		t.Fatalf("ps:\n%s", ps)
	}
	var in instance
	if err := json.Unmarshal([]byte(run("inspect", "cli-web")), &in); err != nil || in.ID != id || in.Env["WHO"] != "cli" {
		t.Fatalf("inspect: %+v %v", in, err)
	}
	if _, err := httpGet("http://"+in.Network.IP+"/", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if logs := run("logs", "cli-web"); !strings.Contains(logs, "hello from hypeman demo") {
		t.Fatalf("logs:\n%s", logs)
	}
	if ops := run("logs", "--source", "hypeman", "cli-web"); !strings.Contains(ops, "create ok") {
		t.Fatalf("hypeman log:\n%s", ops)
	}

	// logs -f follows until interrupted.
	cmd := exec.Command(envBinPath(), "logs", "-f", "--tail", "1", "cli-web")
	cmd.Env = d.env()
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if cmd.ProcessState != nil {
		t.Fatal("logs -f exited by itself")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if !strings.Contains(out.String(), "hello from hypeman demo") {
		t.Fatalf("logs -f printed %q", out.String())
	}

	if _, err := d.cli(t, "rm", "cli-web"); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("rm of a running instance without -f: %v", err)
	}
	run("stop", "cli-web")
	if ps := run("ps", "-a", "-o", "json"); !strings.Contains(ps, `"Stopped"`) {
		t.Fatalf("ps -a -o json:\n%s", ps)
	}
	run("start", "cli-web")
	// start waits until the instance runs, as run does: exec works at once.
	if out := run("exec", "cli-web", "--", "echo", "started"); out != "started\n" {
		t.Fatalf("exec -- right after start printed %q", out)
	}
	if _, err := d.cli(t, "exec", "no-such-instance", "true"); err == nil || !strings.Contains(err.Error(), `no instance named "no-such-instance"`) {
		t.Fatalf("exec in an unknown instance: %v", err)
	}
	run("rm", "-f", "cli-web")
	if ps := run("ps", "-a"); strings.Contains(ps, "cli-web") {
		t.Fatalf("rm -f left it:\n%s", ps)
	}
	if images := run("images"); !strings.Contains(images, "demo:latest") || !strings.Contains(images, "ready") {
		t.Fatalf("images:\n%s", images)
	}
	if tok := strings.TrimSpace(run("token")); strings.Count(tok, ".") != 2 {
		t.Fatalf("token printed %q", tok)
	}
	pulled := run("pull", img)
	if !strings.Contains(pulled, "@sha256:") {
		t.Fatalf("pull printed %q", pulled)
	}
}

func envBinPath() string { return getenv(envBin) }
