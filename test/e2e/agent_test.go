package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// wsExec runs a command through GET /instances/{id}/exec with the
// reference's framing and returns the output and exit code. resize, when
// set, is sent as a TEXT {"resize":...} frame after the first output.
func wsExec(t *testing.T, d *daemon, id string, req map[string]any, stdin []byte, resize *[2]int) (string, int) {
	t.Helper()
	h := http.Header{"Authorization": {"Bearer " + d.token}}
	conn, resp, err := websocket.DefaultDialer.Dial("ws://"+d.addr+"/instances/"+id+"/exec", h)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("exec dial: %v (status %d)", err, status)
	}
	defer conn.Close()
	first, _ := json.Marshal(req)
	if err := conn.WriteMessage(websocket.TextMessage, first); err != nil {
		t.Fatal(err)
	}
	if stdin != nil {
		conn.WriteMessage(websocket.BinaryMessage, stdin)
		conn.WriteMessage(websocket.TextMessage, []byte(`{"stdin_eof":true}`))
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	var out bytes.Buffer
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			t.Fatalf("exec read: %v (output so far %q)", err, out.String())
		}
		if typ == websocket.BinaryMessage {
			out.Write(msg)
			if resize != nil {
				b, _ := json.Marshal(map[string]any{"resize": map[string]int{"rows": resize[0], "cols": resize[1]}})
				conn.WriteMessage(websocket.TextMessage, b)
				resize = nil
			}
			continue
		}
		var exit struct {
			ExitCode *int `json:"exitCode"`
		}
		if json.Unmarshal(msg, &exit) == nil && exit.ExitCode != nil {
			return out.String(), *exit.ExitCode
		}
		t.Fatalf("unexpected TEXT frame %s", msg)
	}
}

func sh(script string) map[string]any {
	return map[string]any{"command": []string{"/bin/sh", "-c", script}}
}

func TestExec(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	in := create(t, d, map[string]any{"name": "exec", "image": img})
	waitState(t, d, in.ID, "Running")

	for _, tc := range []struct {
		script string
		out    string
		code   int
	}{
		{"echo hello", "hello\n", 0},
		{"echo fails; exit 3", "fails\n", 3},
		{"echo killed; kill -9 $$", "killed\n", 137},
		{"echo $GREETING-$((6*7))", "hi-42\n", 0},
	} {
		req := sh(tc.script)
		req["env"] = map[string]string{"GREETING": "hi"}
		if out, code := wsExec(t, d, in.ID, req, nil, nil); out != tc.out || code != tc.code {
			t.Errorf("%q: output %q exit %d, want %q exit %d", tc.script, out, code, tc.out, tc.code)
		}
	}
	if out, code := wsExec(t, d, in.ID, map[string]any{"command": []string{"cat"}}, []byte("piped through stdin\n"), nil); out != "piped through stdin\n" || code != 0 {
		t.Errorf("stdin: %q %d", out, code)
	}
	if out, code := wsExec(t, d, in.ID, map[string]any{"command": []string{"/nonexistent"}}, nil, nil); code != 127 || !strings.HasPrefix(out, "Error: ") {
		t.Errorf("missing command: %q exit %d", out, code)
	}
	// A TTY sees the requested size, then a resize.
	tty := map[string]any{"command": []string{"/bin/sh", "-c", "stty size; read x; stty size"}, "tty": true, "rows": 33, "cols": 101}
	out, code := wsExecTTY(t, d, in.ID, tty, [2]int{50, 132})
	if code != 0 || !strings.Contains(out, "33 101") || !strings.Contains(out, "50 132") {
		t.Errorf("tty: %q exit %d, want sizes 33 101 then 50 132", out, code)
	}

	// 20 execs at once on one instance all get their own output.
	var wg sync.WaitGroup
	errs := make(chan string, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			want := fmt.Sprintf("exec-%d\n", i)
			if out, code := wsExec(t, d, in.ID, sh(fmt.Sprintf("sleep 0.$((%d %% 5)); echo exec-%d", i, i)), nil, nil); out != want || code != 0 {
				errs <- fmt.Sprintf("exec %d: %q %d", i, out, code)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}

	// A client that disconnects kills its process in the guest.
	h := http.Header{"Authorization": {"Bearer " + d.token}}
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+d.addr+"/instances/"+in.ID+"/exec", h)
	if err != nil {
		t.Fatal(err)
	}
	conn.WriteMessage(websocket.TextMessage, []byte(`{"command":["/bin/sh","-c","echo $$ > /tmp/orphan.pid; exec sleep 600"]}`))
	time.Sleep(2 * time.Second)
	conn.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := wsExec(t, d, in.ID, sh("p=$(cat /tmp/orphan.pid); [ -e /proc/$p ] && echo alive || echo gone"), nil, nil)
		if out == "gone\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the disconnected exec's process still runs (%q)", out)
		}
		time.Sleep(300 * time.Millisecond)
	}

	// The CLI, as a user types it.
	if out, err := d.cli(t, "exec", "exec", "echo", "from", "cli"); err != nil || out != "from cli\n" {
		t.Fatalf("hypeman exec: %q %v", out, err)
	}
	cmd := exec.Command(envBinPath(), "exec", "exec", "sh", "-c", "exit 5")
	cmd.Env = d.env()
	if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 5 {
		t.Fatalf("hypeman exec exit code: %v", err)
	}
}

// wsExecTTY runs a TTY command that reads one line between two outputs:
// after the first output it sends a resize, then a newline.
func wsExecTTY(t *testing.T, d *daemon, id string, req map[string]any, size [2]int) (string, int) {
	t.Helper()
	h := http.Header{"Authorization": {"Bearer " + d.token}}
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+d.addr+"/instances/"+id+"/exec", h)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	first, _ := json.Marshal(req)
	conn.WriteMessage(websocket.TextMessage, first)
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	var out bytes.Buffer
	sent := false
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			t.Fatalf("tty read: %v (%q)", err, out.String())
		}
		if typ == websocket.BinaryMessage {
			out.Write(msg)
			if !sent && strings.Contains(out.String(), "\n") {
				b, _ := json.Marshal(map[string]any{"resize": map[string]int{"rows": size[0], "cols": size[1]}})
				conn.WriteMessage(websocket.TextMessage, b)
				time.Sleep(200 * time.Millisecond)
				conn.WriteMessage(websocket.BinaryMessage, []byte("\n"))
				sent = true
			}
			continue
		}
		var exit struct {
			ExitCode *int `json:"exitCode"`
		}
		if json.Unmarshal(msg, &exit) == nil && exit.ExitCode != nil {
			return out.String(), *exit.ExitCode
		}
	}
}

func TestCopyAndStat(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	in := create(t, d, map[string]any{"name": "copy", "image": img})
	waitState(t, d, in.ID, "Running")

	src := t.TempDir()
	big := make([]byte, 50<<20)
	rand.Read(big)
	os.WriteFile(filepath.Join(src, "big.bin"), big, 0o640)
	os.MkdirAll(filepath.Join(src, "tree", "sub"), 0o750)
	os.WriteFile(filepath.Join(src, "tree", "a.txt"), []byte("alpha\n"), 0o600)
	os.WriteFile(filepath.Join(src, "tree", "sub", "run.sh"), []byte("#!/bin/sh\necho run\n"), 0o755)
	os.Symlink("a.txt", filepath.Join(src, "tree", "link"))

	start := time.Now()
	if _, err := d.cli(t, "cp", filepath.Join(src, "big.bin"), "copy:/data/big.bin"); err != nil {
		t.Fatal(err)
	}
	t.Logf("cp 50 MB into the guest: %v", time.Since(start))
	if _, err := d.cli(t, "cp", filepath.Join(src, "tree"), "copy:/data/tree"); err != nil {
		t.Fatal(err)
	}
	sum := fmt.Sprintf("%x", sha256.Sum256(big))
	if out, _ := wsExec(t, d, in.ID, sh("sha256sum /data/big.bin | cut -c1-64; stat -c '%a' /data/big.bin /data/tree/a.txt /data/tree/sub/run.sh; readlink /data/tree/link; /data/tree/sub/run.sh"), nil, nil); out != sum+"\n640\n600\n755\na.txt\nrun\n" {
		t.Fatalf("in the guest:\n%s\nwant sha %s, modes 640 600 755, link a.txt, script runs", out, sum)
	}

	dst := t.TempDir()
	start = time.Now()
	if _, err := d.cli(t, "cp", "copy:/data/big.bin", filepath.Join(dst, "big.bin")); err != nil {
		t.Fatal(err)
	}
	t.Logf("cp 50 MB out of the guest: %v", time.Since(start))
	if _, err := d.cli(t, "cp", "copy:/data/tree", filepath.Join(dst, "tree")); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dst, "big.bin"))
	if !bytes.Equal(got, big) {
		t.Fatal("50 MB file differs after the round trip")
	}
	for name, mode := range map[string]os.FileMode{"big.bin": 0o640, "tree/a.txt": 0o600, "tree/sub/run.sh": 0o755, "tree/sub": 0o750 | os.ModeDir} {
		fi, err := os.Lstat(filepath.Join(dst, name))
		if err != nil || fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v (%v)", name, fi.Mode(), mode, err)
		}
	}
	if target, err := os.Readlink(filepath.Join(dst, "tree", "link")); err != nil || target != "a.txt" {
		t.Errorf("symlink came back as %q, %v", target, err)
	}

	for _, tc := range []struct {
		path, want string
	}{
		{"/data/tree/a.txt", `"exists":true`},
		{"/data/tree", `"is_dir":true`},
		{"/data/nope", `"exists":false`},
	} {
		st, raw := d.do("GET", "/instances/"+in.ID+"/stat?path="+tc.path, nil, nil)
		if st != 200 || !strings.Contains(string(raw), tc.want) {
			t.Errorf("stat %s: %d %s", tc.path, st, raw)
		}
	}
	var info struct {
		IsFile bool  `json:"is_file"`
		Mode   int   `json:"mode"`
		Size   int64 `json:"size"`
	}
	d.do("GET", "/instances/"+in.ID+"/stat?path=/data/tree/a.txt", nil, &info)
	if !info.IsFile || info.Mode != 0o600 || info.Size != 6 {
		t.Errorf("stat of a.txt = %+v", info)
	}
	var stats struct {
		CPUSeconds float64 `json:"cpu_seconds"`
		RSS        int64   `json:"memory_rss_bytes"`
		Rx, Tx     int64
		VCPUs      int `json:"allocated_vcpus"`
	}
	if st, raw := d.do("GET", "/instances/"+in.ID+"/stats", nil, &stats); st != 200 || stats.CPUSeconds <= 0 || stats.RSS <= 0 || stats.VCPUs != 2 {
		t.Errorf("stats: %d %s", st, raw)
	}
}

// TestStopKillsProgramIgnoringSIGTERM: stop sends SIGTERM, waits the stop
// timeout (5 s by default), then SIGKILL.
func TestStopKillsProgramIgnoringSIGTERM(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	in := create(t, d, map[string]any{"name": "stubborn", "image": img,
		"cmd": []string{"/bin/sh", "-c", "trap '' TERM; echo ready; while true; do sleep 1; done"}})
	waitState(t, d, in.ID, "Running")
	waitLog(t, d, in.ID, "ready")
	start := time.Now()
	var got instance
	if st, raw := d.do("POST", "/instances/"+in.ID+"/stop", nil, &got); st != 200 {
		t.Fatalf("stop: %d %s", st, raw)
	}
	took := time.Since(start)
	if got.State != "Stopped" || got.ExitMessage == nil || !strings.Contains(*got.ExitMessage, "killed by signal 9 (SIGKILL)") || got.ExitCode == nil || *got.ExitCode != 137 {
		t.Fatalf("after stop: state %s code %v message %v", got.State, got.ExitCode, got.ExitMessage)
	}
	if took < 4*time.Second {
		t.Fatalf("stop took %v: SIGKILL came before the 5 s stop timeout", took)
	}
}

// TestExecRefusedWhenNotRunning: 409 before the upgrade.
func TestExecRefusedWhenNotRunning(t *testing.T) {
	t.Parallel()
	d, img := shared(t)
	in := create(t, d, map[string]any{"name": "exec-stopped", "image": img, "cmd": []string{"/bin/sh", "-c", "exit 0"}})
	d.do("GET", "/instances/"+in.ID+"/wait?state=Stopped&timeout=3m", nil, nil)
	for _, ep := range []string{"exec", "cp"} {
		h := http.Header{"Authorization": {"Bearer " + d.token}}
		_, resp, err := websocket.DefaultDialer.Dial("ws://"+d.addr+"/instances/"+in.ID+"/"+ep, h)
		if err == nil || resp == nil || resp.StatusCode != 409 {
			t.Fatalf("%s on a Stopped instance: %v %v", ep, err, resp)
		}
		var e apiError
		json.NewDecoder(resp.Body).Decode(&e)
		if e.Code != "invalid_state" || !strings.Contains(e.Message, "instance must be running (current state: Stopped)") {
			t.Fatalf("%s: %+v", ep, e)
		}
	}
	if st, _ := d.do("GET", "/instances/"+in.ID+"/stat?path=/", nil, nil); st != 409 {
		t.Fatalf("stat on a Stopped instance: %d", st)
	}
}
