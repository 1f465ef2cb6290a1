package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
)

// fakeExec serves the exec protocol: "cat" echoes stdin until the end of
// stdin, "exit N" exits with N, "show" prints the start message; path
// /instances/stopped/exec refuses before the upgrade.
func fakeExec(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "stopped") {
			http.Error(w, `{"code":"invalid_state","message":"instance must be running (current state: Stopped)"}`, 409)
			return
		}
		conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		_, start, err := conn.ReadMessage()
		if err != nil {
			return
		}
		var opts execOptions
		_ = json.Unmarshal(start, &opts)
		exit := func(code int) {
			_ = conn.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"exitCode":%d}`, code))
		}
		switch opts.Command[0] {
		case "show":
			_ = conn.WriteMessage(websocket.BinaryMessage, start)
			exit(0)
		case "exit":
			var n int
			fmt.Sscan(opts.Command[1], &n)
			exit(n)
		case "cat":
			for {
				typ, b, err := conn.ReadMessage()
				if err != nil {
					return
				}
				if typ == websocket.TextMessage && string(b) == `{"stdin_eof":true}` {
					exit(0)
					return
				}
				_ = conn.WriteMessage(websocket.BinaryMessage, b)
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestExecSession(t *testing.T) {
	srv := fakeExec(t)
	u := "ws" + strings.TrimPrefix(srv.URL, "http") + "/instances/vm/exec"
	cases := []struct {
		name  string
		opts  execOptions
		stdin io.Reader
		out   string
		code  int
	}{
		{"stdin forwarded, then its end", execOptions{Command: []string{"cat"}}, strings.NewReader("hello\n"), "hello\n", 0},
		{"no -i: stdin ends at once", execOptions{Command: []string{"cat"}}, nil, "", 0},
		{"exit code", execOptions{Command: []string{"exit", "7"}}, nil, "", 7},
		{"start message", execOptions{Command: []string{"show"}, Env: map[string]string{"K": "V"}, Cwd: "/w", Timeout: 5, TTY: true},
			nil, `{"command":["show"],"tty":true,"env":{"K":"V"},"cwd":"/w","timeout":5}`, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, _, err := websocket.DefaultDialer.Dial(u, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var out bytes.Buffer
			code, err := execSession(context.Background(), conn, c.opts, c.stdin, &out)
			if err != nil || code != c.code || out.String() != c.out {
				t.Fatalf("code %d, out %q, err %v", code, out.String(), err)
			}
		})
	}
}

func TestDialWSErrorBeforeUpgrade(t *testing.T) {
	srv := fakeExec(t)
	t.Setenv("HYPEMAN_BASE_URL", srv.URL)
	t.Setenv("HYPEMAN_API_KEY", "k")
	a := &app{out: io.Discard, errOut: io.Discard}
	_, err := a.dialWS(context.Background(), "stopped", "exec")
	if err == nil || err.Error() != "instance must be running (current state: Stopped) (409 invalid_state)" {
		t.Fatalf("err %v", err)
	}
}

func TestWSURL(t *testing.T) {
	cases := map[string]string{
		"http://localhost:4973":      "ws://localhost:4973/instances/a%2Fb/cp",
		"https://h.example/api/":     "wss://h.example/api/instances/a%2Fb/cp",
		"http://127.0.0.1:1/prefix/": "ws://127.0.0.1:1/prefix/instances/a%2Fb/cp",
	}
	for base, want := range cases {
		if got, err := wsURL(base, "a/b", "cp"); err != nil || got != want {
			t.Errorf("%s: %s %v", base, got, err)
		}
	}
}

func TestInstanceErr(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"resource not found (404 not_found)", `no instance named "web" (or with that ID) (404 not_found)`},
		{"invalid state transition: cannot fork from state Running (set from_running=true to allow standby+restore flow) (409 invalid_state)",
			"invalid state transition: cannot fork from state Running (add --from-running to allow standby+restore flow) (409 invalid_state)"},
		{"instance must be running (409 invalid_state)", "instance must be running (409 invalid_state)"},
	} {
		if got := instanceErr("web", errors.New(tc.in)).Error(); got != tc.want {
			t.Errorf("instanceErr(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if instanceErr("web", nil) != nil {
		t.Error("nil error became an error")
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"web", "web-2", "a", "0abc"} {
		if err := checkName(ok); err != nil {
			t.Errorf("checkName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "webX", "-web", "web-", "we_b", strings.Repeat("a", 64)} {
		if err := checkName(bad); err == nil || !strings.Contains(err.Error(), "lowercase letters, digits and dashes") {
			t.Errorf("checkName(%q) = %v", bad, err)
		}
	}
}
