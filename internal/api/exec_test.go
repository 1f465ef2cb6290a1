package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// runExecFrames sends start (and then extra frames) and returns every
// frame the server sent until it closed.
func runExecFrames(t *testing.T, e *agentEnv, start string, extra ...frame) []frame {
	t.Helper()
	conn := e.dial(t, "/instances/vm/exec")
	send(t, conn, true, start)
	for _, f := range extra {
		send(t, conn, f.text, f.data)
	}
	return readAll(t, conn)
}

func TestExecFrameSequence(t *testing.T) {
	e := newAgentEnv(t)
	cases := []struct {
		name, start string
		want        string // frames joined by |
	}{
		{"output then exit", `{"command":["echo","hello","world"]}`, `B"hello world\n"|T{"exitCode":0}`},
		{"exit code", `{"command":["exit","3"]}`, `T{"exitCode":3}`},
		{"cannot start", `{"command":["nosuch"]}`,
			`B"Error: exec: \"nosuch\": executable file not found in $PATH\r\n"|T{"exitCode":127}`},
		{"request fields reach the guest",
			`{"command":["env"],"tty":true,"env":{"K":"V"},"cwd":"/app","timeout":30,"rows":24,"cols":80,"wait_for_agent":2}`,
			`B"tty=true cwd=/app env=map[K:V] timeout=30 size=24x80\n"|T{"exitCode":0}`},
		{"bad first frame: binary", "", `T{"error":"first message must be JSON text"}`},
		{"bad first frame: not JSON", "not json", `T{"error":"invalid JSON: invalid character 'o' in literal null (expecting 'u')"}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn := e.dial(t, "/instances/vm/exec")
			send(t, conn, c.start != "", c.start)
			got := joinFrames(readAll(t, conn))
			if got != c.want {
				t.Fatalf("frames\n got %s\nwant %s", got, c.want)
			}
		})
	}
}

func joinFrames(fs []frame) string {
	var s []string
	for _, f := range fs {
		s = append(s, f.String())
	}
	return strings.Join(s, "|")
}

// splitOutput returns the concatenated BINARY frames and the TEXT frames.
func splitOutput(fs []frame) (out string, text []string) {
	for _, f := range fs {
		if f.text {
			text = append(text, f.data)
		} else {
			out += f.data
		}
	}
	return out, text
}

func TestExecStdinResizeAndEOF(t *testing.T) {
	e := newAgentEnv(t)
	fs := runExecFrames(t, e, `{"command":["cat"],"tty":true}`,
		frame{data: "abc"},
		frame{text: true, data: `{"resize":{"rows":30,"cols":100}}`},
		frame{text: true, data: `{"resize":{"rows":0,"cols":100}}`}, // ignored: both must be > 0
		frame{text: true, data: "text is stdin too;"},
		frame{text: true, data: `{"not":"a control message"}`},
		frame{text: true, data: `{"stdin_eof":true}`})
	out, text := splitOutput(fs)
	want := "abc" + `resize {"rows":30,"cols":100}` + "\n" + "text is stdin too;" + `{"not":"a control message"}`
	if out != want || len(text) != 1 || text[0] != `{"exitCode":0}` {
		t.Fatalf("output %q, text %q", out, text)
	}
	if fs[len(fs)-1].data != `{"exitCode":0}` {
		t.Fatalf("exit code is not the last frame: %v", fs)
	}
}

func TestExecResizeWithoutTTYIsDropped(t *testing.T) {
	e := newAgentEnv(t)
	out, _ := splitOutput(runExecFrames(t, e, `{"command":["cat"]}`,
		frame{text: true, data: `{"resize":{"rows":30,"cols":100}}`},
		frame{data: "x"},
		frame{text: true, data: `{"stdin_eof":true}`}))
	if out != "x" {
		t.Fatalf("output %q", out)
	}
}

func TestExecLargeOutput(t *testing.T) {
	e := newAgentEnv(t)
	fs := runExecFrames(t, e, `{"command":["big","1000000"]}`)
	out, text := splitOutput(fs)
	if len(out) != 1000000 || strings.Trim(out, "x") != "" || len(text) != 1 || text[0] != `{"exitCode":0}` {
		t.Fatalf("got %d bytes, text %q", len(out), text)
	}
	for _, f := range fs {
		if len(f.data) > chunkSize {
			t.Fatalf("frame of %d bytes", len(f.data))
		}
	}
}

func TestExecClientDisconnectKillsTheCommand(t *testing.T) {
	e := newAgentEnv(t)
	conn := e.dial(t, "/instances/vm/exec")
	send(t, conn, true, `{"command":["sleep"]}`)
	send(t, conn, false, "some stdin")
	conn.Close()
	e.guest.waitFor(t, "the command to be killed", func() bool { return e.guest.killed == 1 })
}

func TestExecConcurrent(t *testing.T) {
	e := newAgentEnv(t)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := e.dial(t, "/instances/vm/exec")
			if err := conn.WriteMessage(1, fmt.Appendf(nil, `{"command":["echo","n%d"]}`, i)); err != nil {
				errs <- err
				return
			}
			var out, exit string
			for {
				typ, p, err := conn.ReadMessage()
				if err != nil {
					break
				}
				if typ == 1 {
					exit = string(p)
				} else {
					out += string(p)
				}
			}
			if out != fmt.Sprintf("n%d\n", i) || exit != `{"exitCode":0}` {
				errs <- fmt.Errorf("exec %d: output %q exit %q", i, out, exit)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Errors before the upgrade are http.Error-style: text/plain, with the
// API's JSON error object as the text.
func TestWebSocketErrorsBeforeUpgrade(t *testing.T) {
	e := newAgentEnv(t)
	cases := []struct {
		path, token string
		status      int
		code, msg   string
	}{
		{"/instances/stopped/exec", e.token, 409, "invalid_state", "instance must be running (current state: Stopped)"},
		{"/instances/stopped/cp", e.token, 409, "invalid_state", "instance must be running (current state: Stopped)"},
		{"/instances/nope/exec", e.token, 404, "not_found", "instance nope not found"},
		{"/instances/vm/exec", "", 401, "Unauthorized", ""},
		{"/instances/vm/cp", "bad", 401, "Unauthorized", ""},
	}
	for _, c := range cases {
		req, _ := http.NewRequest("GET", e.srv.URL+c.path, nil)
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var body errorBody
		if err := json.Unmarshal(b, &body); err != nil || resp.StatusCode != c.status || body.Code != c.code ||
			(c.msg != "" && body.Message != c.msg) {
			t.Errorf("%s: %d %s (%v)", c.path, resp.StatusCode, b, err)
		}
		if c.status == 409 && !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
			t.Errorf("%s: content type %q", c.path, resp.Header.Get("Content-Type"))
		}
	}
}

// Through the real instances manager: a stopped instance refuses exec.
func TestExecOfStoppedInstanceThroughTheManager(t *testing.T) {
	env := newAPIEnv(t)
	for _, p := range []string{"/instances/inst-1/exec", "/instances/" + idTwo + "/cp"} {
		resp := env.do(t, "GET", p, "token", "")
		b, _ := io.ReadAll(resp.Body)
		want := `{"code":"invalid_state","message":"instance must be running (current state: Stopped)"}` + "\n"
		if resp.StatusCode != 409 || string(b) != want {
			t.Errorf("%s: %d %q", p, resp.StatusCode, b)
		}
	}
}
