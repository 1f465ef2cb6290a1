package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// qmpCommand is one command a fake QMP server received.
type qmpCommand struct {
	Execute   string          `json:"execute"`
	ID        json.RawMessage `json:"id"`
	Arguments json.RawMessage `json:"arguments"`
}

const (
	qmpGreeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}`
	qmpEvent    = `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RTC_CHANGE", "data": {"offset": 0}}`
)

// qmpReturn is a success reply to cmd.
func qmpReturn(cmd qmpCommand, ret string) string {
	return `{"return": ` + ret + `, "id": ` + string(cmd.ID) + `}`
}

// defaultQMP answers like QEMU: capabilities, a running status with an
// event before the reply, and success for send-key and quit.
func defaultQMP(cmd qmpCommand) []string {
	switch cmd.Execute {
	case "qmp_capabilities", "send-key", "quit":
		return []string{qmpReturn(cmd, "{}")}
	case "query-status":
		return []string{qmpEvent, qmpReturn(cmd, `{"status": "running", "singlestep": false, "running": true}`)}
	}
	return []string{`{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd.Execute + ` has not been found"}, "id": ` + string(cmd.ID) + `}`}
}

// serveQMPConn speaks QMP on conn: greeting, then handle's lines for each
// command, until the client closes. Received commands go to record.
func serveQMPConn(conn net.Conn, greeting string, handle func(qmpCommand) []string, record func(qmpCommand)) {
	defer conn.Close()
	w := bufio.NewWriter(conn)
	write := func(lines ...string) bool {
		for _, l := range lines {
			w.WriteString(l + "\r\n") // QEMU ends lines with CRLF
		}
		return w.Flush() == nil
	}
	if !write(greeting) {
		return
	}
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var cmd qmpCommand
		if json.Unmarshal(line, &cmd) != nil {
			continue
		}
		if record != nil {
			record(cmd)
		}
		if !write(handle(cmd)...) {
			return
		}
	}
}

// fakeQMP is an in-process QMP server on a unix socket.
type fakeQMP struct {
	path string
	ln   net.Listener

	mu   sync.Mutex // guards cmds
	cmds []qmpCommand
}

// shortDir returns a new dir under /tmp, short enough for socket paths
// (t.TempDir can exceed the 107-byte sun_path limit with long test names).
func shortDir(t *testing.T, pattern string) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func newFakeQMP(t *testing.T, greeting string, handle func(qmpCommand) []string) *fakeQMP {
	t.Helper()
	path := filepath.Join(shortDir(t, "hq"), "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeQMP{path: path, ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				serveQMPConn(conn, greeting, handle, f.record)
			}()
		}
	}()
	return f
}

func (f *fakeQMP) record(c qmpCommand) {
	f.mu.Lock()
	f.cmds = append(f.cmds, c)
	f.mu.Unlock()
}

func (f *fakeQMP) commands() []qmpCommand {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]qmpCommand(nil), f.cmds...)
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestQMPQueryStatus(t *testing.T) {
	tests := []struct {
		name    string
		handle  func(qmpCommand) []string
		want    statusInfo
		wantErr string
	}{
		{
			name:   "events interleaved before the reply",
			handle: defaultQMP,
			want:   statusInfo{Status: "running", Running: true},
		},
		{
			name: "a reply with another id is skipped",
			handle: func(c qmpCommand) []string {
				if c.Execute != "query-status" {
					return defaultQMP(c)
				}
				return []string{
					qmpEvent,
					`{"return": {"status": "paused", "running": false}, "id": 999}`,
					qmpEvent,
					qmpReturn(c, `{"status": "shutdown", "running": false}`),
				}
			},
			want: statusInfo{Status: "shutdown"},
		},
		{
			name: "error reply",
			handle: func(c qmpCommand) []string {
				if c.Execute != "query-status" {
					return defaultQMP(c)
				}
				return []string{qmpEvent, `{"error": {"class": "GenericError", "desc": "boom"}, "id": ` + string(c.ID) + `}`}
			},
			wantErr: "qmp: query-status: GenericError: boom",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeQMP(t, qmpGreeting, tt.handle)
			ctx := testCtx(t)
			m, err := dialMonitor(ctx, srv.path)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			got, err := m.queryStatus(ctx)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			cmds := srv.commands()
			if len(cmds) != 2 || cmds[0].Execute != "qmp_capabilities" || cmds[1].Execute != "query-status" {
				t.Errorf("commands %+v, want qmp_capabilities then query-status", cmds)
			}
		})
	}
}

func TestQMPConnectionClosedBeforeReply(t *testing.T) {
	srv := newFakeQMPClosing(t)
	ctx := testCtx(t)
	m, err := dialMonitor(ctx, srv.path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.queryStatus(ctx); err == nil || !strings.Contains(err.Error(), "qmp: query-status:") {
		t.Errorf("err %v, want a query-status read error", err)
	}
}

// newFakeQMPClosing serves one session that negotiates and then hangs up
// on the first command after an event.
func newFakeQMPClosing(t *testing.T) *fakeQMP {
	t.Helper()
	path := filepath.Join(shortDir(t, "hq"), "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		conn.Write([]byte(qmpGreeting + "\n"))
		line, _ := r.ReadBytes('\n')
		var c qmpCommand
		json.Unmarshal(line, &c)
		conn.Write([]byte(qmpReturn(c, "{}") + "\n"))
		r.ReadBytes('\n')
		conn.Write([]byte(qmpEvent + "\n"))
	}()
	return &fakeQMP{path: path, ln: ln}
}

func TestQMPHandshakeFailures(t *testing.T) {
	tests := []struct {
		name     string
		greeting string
		handle   func(qmpCommand) []string
		wantErr  string
	}{
		{"not a QMP greeting", `{"hello": 1}`, defaultQMP, "qmp: unexpected greeting"},
		{"capabilities refused", qmpGreeting, func(c qmpCommand) []string {
			return []string{`{"error": {"class": "CommandNotFound", "desc": "nope"}, "id": ` + string(c.ID) + `}`}
		}, "qmp: qmp_capabilities: CommandNotFound: nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeQMP(t, tt.greeting, tt.handle)
			m, err := dialMonitor(testCtx(t), srv.path)
			if err == nil {
				m.Close()
				t.Fatal("handshake succeeded")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err %v, want %q", err, tt.wantErr)
			}
		})
	}
	t.Run("no socket", func(t *testing.T) {
		_, err := dialMonitor(testCtx(t), filepath.Join(shortDir(t, "hq"), "none.sock"))
		if err == nil || !strings.Contains(err.Error(), "qmp: dial") {
			t.Errorf("err %v, want a dial error", err)
		}
	})
}

func TestQMPDeadline(t *testing.T) {
	srv := newFakeQMP(t, qmpGreeting, func(c qmpCommand) []string {
		if c.Execute == "query-status" {
			return []string{qmpEvent} // never the reply
		}
		return defaultQMP(c)
	})
	m, err := dialMonitor(testCtx(t), srv.path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = m.queryStatus(ctx)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("err %v, want a timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestQMPSendCtrlAltDelAndQuit(t *testing.T) {
	srv := newFakeQMP(t, qmpGreeting, defaultQMP)
	ctx := testCtx(t)
	m, err := dialMonitor(ctx, srv.path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.sendCtrlAltDel(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.quit(ctx); err != nil {
		t.Fatal(err)
	}
	cmds := srv.commands()
	if len(cmds) != 3 {
		t.Fatalf("commands %+v", cmds)
	}
	var args struct {
		Keys []keyValue `json:"keys"`
	}
	if err := json.Unmarshal(cmds[1].Arguments, &args); err != nil || cmds[1].Execute != "send-key" {
		t.Fatalf("send-key: %+v %v", cmds[1], err)
	}
	want := []keyValue{{"qcode", "ctrl"}, {"qcode", "alt"}, {"qcode", "delete"}}
	if len(args.Keys) != 3 || args.Keys[0] != want[0] || args.Keys[1] != want[1] || args.Keys[2] != want[2] {
		t.Errorf("keys %+v, want %+v", args.Keys, want)
	}
	if cmds[2].Execute != "quit" || cmds[2].Arguments != nil {
		t.Errorf("quit: %+v", cmds[2])
	}
	// Ids increase within a session.
	if string(cmds[0].ID) != "1" || string(cmds[1].ID) != "2" || string(cmds[2].ID) != "3" {
		t.Errorf("ids %s %s %s", cmds[0].ID, cmds[1].ID, cmds[2].ID)
	}
}
