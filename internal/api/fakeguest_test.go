package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/hypeman-vm/hypeman/internal/agent"
	"github.com/hypeman-vm/hypeman/internal/agent/proto"
	"github.com/hypeman-vm/hypeman/internal/auth"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/instances"
)

// fakeGuest is a minimal guest agent speaking the real protocol over
// net.Pipe: exec runs a few built-in commands, cp and stat use an
// in-memory file tree.
type fakeGuest struct {
	mu      sync.Mutex // guards the fields below
	files   map[string]*fakeFile
	aborted []string // cp_to paths whose stream ended before EOF
	killed  int      // execs whose stream ended before their exit
	changed chan struct{}
}

type fakeFile struct {
	dir      bool
	link     string
	mode     uint32
	data     []byte
	mtime    int64
	uid, gid int
}

func newFakeGuest() *fakeGuest {
	return &fakeGuest{files: map[string]*fakeFile{"/": {dir: true, mode: 0o755}}, changed: make(chan struct{})}
}

// update runs fn under the lock and wakes waiters.
func (g *fakeGuest) update(fn func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	fn()
	close(g.changed)
	g.changed = make(chan struct{})
}

// waitFor waits until cond (called under the lock) holds.
func (g *fakeGuest) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		g.mu.Lock()
		ok, ch := cond(), g.changed
		g.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (g *fakeGuest) put(p string, f *fakeFile) {
	g.update(func() { g.files[p] = f })
}

func (g *fakeGuest) get(p string) *fakeFile {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.files[p]
}

// Dial implements agent.Dialer: every dial is a new pipe to a new guest
// session.
func (g *fakeGuest) Dial(ctx context.Context) (net.Conn, error) {
	host, guest := net.Pipe()
	go g.serve(guest)
	return host, nil
}

func (g *fakeGuest) serve(conn net.Conn) {
	sess, err := proto.ServerHandshake(context.Background(), conn)
	if err != nil {
		return
	}
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		go g.handle(st)
	}
}

func (g *fakeGuest) handle(st *yamux.Stream) {
	defer st.Close()
	var req proto.Request
	if err := proto.ReadJSON(st, proto.TypeHeader, &req); err != nil {
		return
	}
	switch req.Method {
	case proto.MethodPing:
		_ = proto.WriteJSON(st, proto.TypeResult, proto.Pong{Version: proto.Version})
	case proto.MethodExec:
		g.exec(st, *req.Exec)
	case proto.MethodCopyTo:
		g.copyTo(st, *req.CopyTo)
	case proto.MethodCopyFrom:
		g.copyFrom(st, *req.CopyFrom)
	case proto.MethodStat:
		g.stat(st, *req.Stat)
	default:
		_ = proto.WriteJSON(st, proto.TypeError, proto.Error{Message: "unknown method " + req.Method})
	}
}

// exec runs the built-ins: echo ARGS, exit N, cat (stdin to output until
// EOF; resizes reported as "resize R C"), sleep (until killed), env (the
// request as seen), big N (N bytes of output). Anything else cannot start.
func (g *fakeGuest) exec(st *yamux.Stream, req proto.ExecRequest) {
	out := func(s string) { _ = proto.WriteMsg(st, proto.TypeData, []byte(s)) }
	exit := func(code int) { _ = proto.WriteJSON(st, proto.TypeExit, proto.Exit{Code: code}) }
	args := req.Command
	switch args[0] {
	case "echo":
		out(strings.Join(args[1:], " ") + "\n")
		exit(0)
	case "exit":
		n, _ := strconv.Atoi(args[1])
		exit(n)
	case "env":
		out(fmt.Sprintf("tty=%v cwd=%s env=%v timeout=%d size=%dx%d\n",
			req.TTY, req.Cwd, req.Env, req.TimeoutSeconds, req.Rows, req.Cols))
		exit(0)
	case "big":
		n, _ := strconv.Atoi(args[1])
		chunk := strings.Repeat("x", 50000)
		for ; n > 0; n -= len(chunk) {
			out(chunk[:min(n, len(chunk))])
		}
		exit(0)
	case "cat", "sleep":
		buf := make([]byte, 64*1024)
		for {
			typ, p, err := proto.ReadMsg(st, buf)
			if err != nil {
				g.update(func() { g.killed++ })
				return
			}
			switch {
			case typ == proto.TypeEOF:
				exit(0)
				return
			case typ == proto.TypeResize:
				out("resize " + string(p) + "\n")
			case typ == proto.TypeData && args[0] == "cat":
				out(string(p))
			}
		}
	default:
		_ = proto.WriteJSON(st, proto.TypeExit, proto.Exit{Code: 127, Error: fmt.Sprintf("exec: %q: executable file not found in $PATH", args[0])})
	}
}

// copyTo stores the entry once its EOF arrives; paths under /ro fail.
func (g *fakeGuest) copyTo(st *yamux.Stream, req proto.CopyToRequest) {
	if strings.HasPrefix(req.Path, "/ro/") {
		_ = proto.WriteJSON(st, proto.TypeError, proto.Error{Message: "read-only file system"})
		return
	}
	f := &fakeFile{dir: req.IsDir, link: req.Symlink, mode: req.Mode, mtime: req.Mtime}
	if req.UID != nil {
		f.uid = *req.UID
	}
	if req.GID != nil {
		f.gid = *req.GID
	}
	buf := make([]byte, 64*1024)
	for {
		typ, p, err := proto.ReadMsg(st, buf)
		if err != nil {
			g.update(func() { g.aborted = append(g.aborted, req.Path) })
			return
		}
		if typ == proto.TypeEOF {
			break
		}
		f.data = append(f.data, p...)
	}
	g.put(req.Path, f)
	_ = proto.WriteJSON(st, proto.TypeResult, proto.CopyResult{BytesWritten: int64(len(f.data))})
}

func (g *fakeGuest) copyFrom(st *yamux.Stream, req proto.CopyFromRequest) {
	g.mu.Lock()
	var names []string
	for p := range g.files {
		if p == req.Path || strings.HasPrefix(p, strings.TrimSuffix(req.Path, "/")+"/") {
			names = append(names, p)
		}
	}
	files := map[string]fakeFile{}
	for _, p := range names {
		files[p] = *g.files[p]
	}
	g.mu.Unlock()
	if len(names) == 0 {
		_ = proto.WriteJSON(st, proto.TypeError, proto.Error{Message: "no such file: " + req.Path, NotFound: true})
		return
	}
	sort.Strings(names)
	parent := path.Dir(req.Path)
	for _, p := range names {
		f := files[p]
		rel := strings.TrimPrefix(strings.TrimPrefix(p, parent), "/")
		e := proto.Entry{Path: rel, Mode: f.mode, IsDir: f.dir, IsSymlink: f.link != "", LinkTarget: f.link,
			Size: int64(len(f.data)), Mtime: f.mtime, UID: f.uid, GID: f.gid}
		if err := proto.WriteJSON(st, proto.TypeHeader, e); err != nil {
			return
		}
		if f.dir || f.link != "" {
			continue
		}
		for off := 0; off < len(f.data); off += 10000 {
			_ = proto.WriteMsg(st, proto.TypeData, f.data[off:min(off+10000, len(f.data))])
		}
		_ = proto.WriteMsg(st, proto.TypeEOF, nil)
	}
	_ = proto.WriteJSON(st, proto.TypeResult, struct{}{})
}

func (g *fakeGuest) stat(st *yamux.Stream, req proto.StatRequest) {
	f := g.get(req.Path)
	if f != nil && f.link != "" && req.FollowLinks {
		f = g.get(path.Join(path.Dir(req.Path), f.link))
	}
	if f == nil {
		_ = proto.WriteJSON(st, proto.TypeResult, proto.PathInfo{})
		return
	}
	_ = proto.WriteJSON(st, proto.TypeResult, proto.PathInfo{
		Exists: true, IsDir: f.dir, IsFile: !f.dir && f.link == "", IsSymlink: f.link != "",
		LinkTarget: f.link, Mode: f.mode, Size: int64(len(f.data)),
	})
}

// agentEnv is the HTTP handler whose instance "vm" is Running with a fake
// guest; "stopped" is not running.
type agentEnv struct {
	guest *fakeGuest
	srv   *httptest.Server
	token string
}

func newAgentEnv(t *testing.T) *agentEnv {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	g := newFakeGuest()
	client := agent.New(g, log)
	t.Cleanup(client.Close)
	s := &Server{Deps: Deps{Verifier: auth.NewVerifier(testSecret), Log: log}}
	s.agents = func(ctx context.Context, ref string) (*agent.Client, instances.Instance, error) {
		switch ref {
		case "vm":
			return client, instances.Instance{State: instances.StateRunning}, nil
		case "stopped":
			return nil, instances.Instance{}, errdefs.Newf(errdefs.ErrConflict, "invalid_state",
				"instance must be running (current state: Stopped)")
		}
		return nil, instances.Instance{}, errdefs.Newf(errdefs.ErrNotFound, "not_found", "instance %s not found", ref)
	}
	h, err := s.handler()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	tok, err := auth.Mint(testSecret, "test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &agentEnv{guest: g, srv: srv, token: tok}
}

// dial opens the WebSocket at path.
func (e *agentEnv) dial(t *testing.T, p string) *websocket.Conn {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(e.srv.URL, "http")+p,
		http.Header{"Authorization": {"Bearer " + e.token}})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", p, err, status)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	return conn
}

// frame is one WebSocket message.
type frame struct {
	text bool
	data string
}

func (f frame) String() string {
	if f.text {
		return "T" + f.data
	}
	return "B" + strconv.Quote(f.data)
}

// readAll reads frames until the server closes.
func readAll(t *testing.T, conn *websocket.Conn) []frame {
	t.Helper()
	var out []frame
	for {
		typ, p, err := conn.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				t.Fatalf("read after %v: %v", out, err)
			}
			return out
		}
		out = append(out, frame{text: typ == websocket.TextMessage, data: string(p)})
	}
}

func send(t *testing.T, conn *websocket.Conn, text bool, data string) {
	t.Helper()
	typ := websocket.BinaryMessage
	if text {
		typ = websocket.TextMessage
	}
	if err := conn.WriteMessage(typ, []byte(data)); err != nil {
		t.Fatal(err)
	}
}
