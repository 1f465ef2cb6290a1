package agentd

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

func TestPing(t *testing.T) {
	sess := dial(t, newTestServer(t))
	var pong proto.Pong
	if err := result(t, sess, proto.Request{Method: proto.MethodPing}, &pong); err != nil {
		t.Fatal(err)
	}
	if pong.Version != proto.Version {
		t.Fatalf("pong %+v", pong)
	}
}

func TestUnknownMethod(t *testing.T) {
	sess := dial(t, newTestServer(t))
	err := result(t, sess, proto.Request{Method: "frobnicate"}, nil)
	if err == nil || !strings.Contains(err.Error(), "unknown method") {
		t.Fatalf("err = %v", err)
	}
}

func TestExec(t *testing.T) {
	s := newTestServer(t)
	sess := dial(t, s)
	noExec := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(noExec, []byte("#!/bin/sh\necho no\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cwd := t.TempDir()
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "mycmd"), []byte("#!/bin/sh\necho mine\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		req     proto.ExecRequest
		out     string
		code    int
		errText string
	}{
		{name: "echo", req: proto.ExecRequest{Command: []string{"echo", "hi"}}, out: "hi\n"},
		{name: "exit code", req: proto.ExecRequest{Command: []string{"sh", "-c", "exit 3"}}, code: 3},
		{name: "killed by signal", req: proto.ExecRequest{Command: []string{"sh", "-c", "kill -9 $$"}}, code: 137},
		{name: "stderr merged", req: proto.ExecRequest{Command: []string{"sh", "-c", "echo out; echo err >&2"}}, out: "out\nerr\n"},
		{name: "env merged", req: proto.ExecRequest{Command: []string{"sh", "-c", "echo $KEEP $HOME $NEW"},
			Env: map[string]string{"HOME": "/home/x", "NEW": "new"}}, out: "base /home/x new\n"},
		{name: "PATH of the request", req: proto.ExecRequest{Command: []string{"mycmd"}, Env: map[string]string{"PATH": bin}}, out: "mine\n"},
		{name: "cwd", req: proto.ExecRequest{Command: []string{"pwd"}, Cwd: cwd}, out: cwd + "\n"},
		{name: "default cwd", req: proto.ExecRequest{Command: []string{"pwd"}}, out: s.dir + "\n"},
		{name: "default command", req: proto.ExecRequest{}, code: 0},
		{name: "not found", req: proto.ExecRequest{Command: []string{"no-such-command-xyz"}}, code: 127, errText: "not found"},
		{name: "not found by path", req: proto.ExecRequest{Command: []string{"/no/such/file"}}, code: 127, errText: "no such file"},
		{name: "not executable", req: proto.ExecRequest{Command: []string{noExec}}, code: 126, errText: "permission denied"},
		{name: "bad cwd", req: proto.ExecRequest{Command: []string{"true"}, Cwd: "/no/such/dir"}, code: 126, errText: "working directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "default command" {
				// /bin/sh reads its (empty, closed) stdin and exits 0.
				st := open(t, sess, proto.Request{Method: proto.MethodExec, Exec: &tc.req})
				if err := proto.WriteMsg(st, proto.TypeEOF, nil); err != nil {
					t.Fatal(err)
				}
				if _, exit := readExec(t, st); exit.Code != 0 {
					t.Fatalf("exit %+v", exit)
				}
				return
			}
			out, exit := runExec(t, sess, tc.req)
			if out != tc.out || exit.Code != tc.code {
				t.Fatalf("got %q %+v, want %q code %d", out, exit, tc.out, tc.code)
			}
			if !strings.Contains(exit.Error, tc.errText) {
				t.Fatalf("exit error %q, want it to contain %q", exit.Error, tc.errText)
			}
		})
	}
}

func TestExecTimeout(t *testing.T) {
	sess := dial(t, newTestServer(t))
	start := time.Now()
	_, exit := runExec(t, sess, proto.ExecRequest{Command: []string{"sleep", "30"}, TimeoutSeconds: 1})
	if exit.Code != 124 {
		t.Fatalf("exit %+v", exit)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("timeout took %v", d)
	}
}

func TestExecStdin(t *testing.T) {
	sess := dial(t, newTestServer(t))
	st := open(t, sess, proto.Request{Method: proto.MethodExec, Exec: &proto.ExecRequest{Command: []string{"cat"}}})
	for _, p := range []string{"abc", "def\n"} {
		if err := proto.WriteMsg(st, proto.TypeData, []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := proto.WriteMsg(st, proto.TypeEOF, nil); err != nil {
		t.Fatal(err)
	}
	out, exit := readExec(t, st)
	if out != "abcdef\n" || exit.Code != 0 {
		t.Fatalf("got %q %+v", out, exit)
	}
}

// Output is complete before the Exit, from a pipe and from a terminal.
func TestExecLargeOutput(t *testing.T) {
	sess := dial(t, newTestServer(t))
	out, exit := runExec(t, sess, proto.ExecRequest{Command: []string{"dd", "if=/dev/zero", "bs=1M", "count=3", "status=none"}})
	if len(out) != 3<<20 || exit.Code != 0 {
		t.Fatalf("got %d bytes, %+v", len(out), exit)
	}
	out, exit = runExec(t, sess, proto.ExecRequest{Command: []string{"seq", "1", "20000"}, TTY: true})
	if !strings.HasSuffix(out, "\r\n20000\r\n") || exit.Code != 0 {
		t.Fatalf("tty output ends %q, %+v", out[max(0, len(out)-40):], exit)
	}
}

// A background process that keeps the output open does not hold the Exit.
func TestExecBackgroundProcessDoesNotHoldExit(t *testing.T) {
	sess := dial(t, newTestServer(t))
	start := time.Now()
	out, exit := runExec(t, sess, proto.ExecRequest{Command: []string{"sh", "-c", "sleep 30 & echo $!"}})
	if exit.Code != 0 {
		t.Fatalf("exit %+v", exit)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("output %q", out)
	}
	_ = unix.Kill(pid, unix.SIGKILL)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("exec took %v", d)
	}
}

func TestExecTTY(t *testing.T) {
	sess := dial(t, newTestServer(t))
	t.Run("default size", func(t *testing.T) {
		out, exit := runExec(t, sess, proto.ExecRequest{Command: []string{"stty", "size"}, TTY: true})
		if out != "24 80\r\n" || exit.Code != 0 {
			t.Fatalf("got %q %+v", out, exit)
		}
	})
	t.Run("is the controlling terminal", func(t *testing.T) {
		out, exit := runExec(t, sess, proto.ExecRequest{Command: []string{"sh", "-c", "test -t 0 && echo $TERM > /dev/tty"}, TTY: true})
		if out != "xterm\r\n" || exit.Code != 0 {
			t.Fatalf("got %q %+v", out, exit)
		}
	})
	t.Run("resize", func(t *testing.T) {
		st := open(t, sess, proto.Request{Method: proto.MethodExec, Exec: &proto.ExecRequest{
			Command: []string{"sh", "-c", "stty size; read x; stty size"}, TTY: true, Rows: 30, Cols: 100}})
		var out []byte
		for !bytes.Contains(out, []byte("30 100\r\n")) {
			typ, p, err := proto.ReadMsg(st, nil)
			if err != nil || typ != proto.TypeData {
				t.Fatalf("frame %q %q %v after %q", typ, p, err, out)
			}
			out = append(out, p...)
		}
		if err := proto.WriteJSON(st, proto.TypeResize, proto.Resize{Rows: 40, Cols: 120}); err != nil {
			t.Fatal(err)
		}
		if err := proto.WriteMsg(st, proto.TypeData, []byte("go\n")); err != nil {
			t.Fatal(err)
		}
		rest, exit := readExec(t, st)
		if !strings.HasSuffix(rest, "40 120\r\n") || exit.Code != 0 {
			t.Fatalf("got %q %+v", rest, exit)
		}
	})
	t.Run("EOF types ^D", func(t *testing.T) {
		st := open(t, sess, proto.Request{Method: proto.MethodExec, Exec: &proto.ExecRequest{Command: []string{"cat"}, TTY: true}})
		if err := proto.WriteMsg(st, proto.TypeEOF, nil); err != nil {
			t.Fatal(err)
		}
		if _, exit := readExec(t, st); exit.Code != 0 {
			t.Fatalf("exit %+v", exit)
		}
	})
}

func TestExecConcurrent(t *testing.T) {
	sess := dial(t, newTestServer(t))
	var wg sync.WaitGroup
	errs := make(chan string, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := fmt.Sprintf("out-%d\n", i)
			st, err := sess.OpenStream()
			if err != nil {
				errs <- err.Error()
				return
			}
			defer st.Close()
			_ = st.SetDeadline(time.Now().Add(testTimeout))
			req := proto.ExecRequest{Command: []string{"sh", "-c", "sleep 0.2; echo out-" + strconv.Itoa(i)}}
			if err := proto.WriteJSON(st, proto.TypeHeader, proto.Request{Method: proto.MethodExec, Exec: &req}); err != nil {
				errs <- err.Error()
				return
			}
			out, code, err := collect(st)
			if err != nil || out != want || code != 0 {
				errs <- fmt.Sprintf("call %d: %q %d %v", i, out, code, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// collect is readExec for goroutines that must not call t.Fatal.
func collect(st *yamux.Stream) (string, int, error) {
	var out []byte
	for {
		typ, p, err := proto.ReadMsg(st, nil)
		if err != nil {
			return string(out), -1, err
		}
		if typ == proto.TypeData {
			out = append(out, p...)
			continue
		}
		var e proto.Exit
		return string(out), e.Code, proto.DecodeFrame(typ, p, proto.TypeExit, &e)
	}
}

// startSleeper runs a shell with a background sleep and returns the pids of
// both once the shell has printed them.
func startSleeper(t *testing.T, sess *yamux.Session) (*yamux.Stream, []int) {
	t.Helper()
	st := open(t, sess, proto.Request{Method: proto.MethodExec, Exec: &proto.ExecRequest{
		Command: []string{"sh", "-c", "sleep 1000 & echo $$ $!; wait"}}})
	line, err := bufio.NewReader(dataReader{st}).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(line) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("line %q", line)
		}
		pids = append(pids, pid)
	}
	return st, pids
}

// dataReader reads the payloads of Data frames.
type dataReader struct{ st *yamux.Stream }

func (d dataReader) Read(b []byte) (int, error) {
	typ, p, err := proto.ReadMsg(d.st, nil)
	if err != nil {
		return 0, err
	}
	if typ != proto.TypeData {
		return 0, fmt.Errorf("frame %q", typ)
	}
	return copy(b, p), nil
}

// gone reports whether pid has exited (a zombie counts: the test host's
// PID 1 may not reap orphans).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && (s[i+2] == 'Z' || s[i+2] == 'X')
}

func TestExecClientDisconnectKillsProcesses(t *testing.T) {
	sess := dial(t, newTestServer(t))
	st, pids := startSleeper(t, sess)
	st.Close()
	for _, pid := range pids {
		eventually(t, 5*time.Second, fmt.Sprintf("pid %d to die", pid), func() bool { return gone(pid) })
	}
}

func TestSessionEndKillsProcesses(t *testing.T) {
	sess := dial(t, newTestServer(t))
	_, pids := startSleeper(t, sess)
	sess.Close()
	for _, pid := range pids {
		eventually(t, 5*time.Second, fmt.Sprintf("pid %d to die", pid), func() bool { return gone(pid) })
	}
}

func BenchmarkExecEcho(b *testing.B) {
	sess := dial(b, New(Config{Dir: b.TempDir()}))
	for b.Loop() {
		st, err := sess.OpenStream()
		if err != nil {
			b.Fatal(err)
		}
		req := proto.ExecRequest{Command: []string{"echo", "hi"}}
		if err := proto.WriteJSON(st, proto.TypeHeader, proto.Request{Method: proto.MethodExec, Exec: &req}); err != nil {
			b.Fatal(err)
		}
		if out, code, err := collect(st); err != nil || out != "hi\n" || code != 0 {
			b.Fatalf("%q %d %v", out, code, err)
		}
		st.Close()
	}
}
