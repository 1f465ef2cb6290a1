package agentd

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

const testTimeout = 10 * time.Second

func newTestServer(t *testing.T) *Server {
	t.Helper()
	return New(Config{
		Env:          []string{"PATH=" + defaultPath, "HOME=/root", "HOSTNAME=old", "KEEP=base"},
		Dir:          t.TempDir(),
		HostnameFile: filepath.Join(t.TempDir(), "hostname"),
	})
}

// dial starts s on one end of a pipe, as the agent does on its port, and
// returns the host's session on the other end.
func dial(t testing.TB, s *Server) *yamux.Session {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	host, guest := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		sess, err := proto.ServerHandshake(ctx, guest)
		if err != nil {
			return
		}
		_ = s.Serve(ctx, sess)
	}()
	hctx, hcancel := context.WithTimeout(ctx, testTimeout)
	defer hcancel()
	sess, err := proto.ClientHandshake(hctx, host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sess.Close()
		cancel()
		guest.Close()
		<-done
	})
	return sess
}

// open starts a call: a new stream with req as its header.
func open(t *testing.T, sess *yamux.Session, req proto.Request) *yamux.Stream {
	t.Helper()
	st, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	_ = st.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { st.Close() })
	if err := proto.WriteJSON(st, proto.TypeHeader, req); err != nil {
		t.Fatal(err)
	}
	return st
}

// result makes a call that has no body and decodes its Result into v.
func result(t *testing.T, sess *yamux.Session, req proto.Request, v any) error {
	t.Helper()
	st := open(t, sess, req)
	return proto.ReadJSON(st, proto.TypeResult, v)
}

// runExec runs a command to its end and returns its output and Exit.
func runExec(t *testing.T, sess *yamux.Session, r proto.ExecRequest) (string, proto.Exit) {
	t.Helper()
	st := open(t, sess, proto.Request{Method: proto.MethodExec, Exec: &r})
	return readExec(t, st)
}

// readExec reads Data frames up to the Exit.
func readExec(t *testing.T, st *yamux.Stream) (string, proto.Exit) {
	t.Helper()
	var out []byte
	for {
		typ, p, err := proto.ReadMsg(st, nil)
		if err != nil {
			t.Fatalf("after output %q: %v", out, err)
		}
		switch typ {
		case proto.TypeData:
			out = append(out, p...)
		case proto.TypeExit:
			var e proto.Exit
			if err := json.Unmarshal(p, &e); err != nil {
				t.Fatal(err)
			}
			return string(out), e
		default:
			t.Fatalf("unexpected frame %q %s", typ, p)
		}
	}
}

// handleHere runs one call of s in the calling goroutine (so with its
// thread's namespaces) and returns the first frame of the reply.
func handleHere(s *Server, req proto.Request) (byte, []byte, error) {
	host, guest := net.Pipe()
	defer host.Close()
	type frame struct {
		typ byte
		p   []byte
		err error
	}
	reply := make(chan frame, 1)
	go func() {
		if err := proto.WriteJSON(host, proto.TypeHeader, req); err != nil {
			reply <- frame{err: err}
			return
		}
		typ, p, err := proto.ReadMsg(host, nil)
		reply <- frame{typ, p, err}
	}()
	s.Handle(context.Background(), guest)
	f := <-reply
	return f.typ, f.p, f.err
}

// requireRoot skips tests that give files other owners.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown), as the agent has in the guest")
	}
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
