package agentd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

// The port loop serves one host connection after another: a host that
// goes away takes its calls' processes with it, and the next host gets a
// new session on the reopened port.
func TestLoopServesSessionAfterSession(t *testing.T) {
	ports := make(chan net.Conn)
	var opens, readies atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{
		srv: newTestServer(t),
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		open: func() (io.ReadWriteCloser, error) {
			opens.Add(1)
			select {
			case p := <-ports:
				return p, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
		ready: func() { readies.Add(1) },
	}
	done := make(chan struct{})
	go func() { defer close(done); a.loop(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	connect := func() net.Conn {
		host, guest := net.Pipe()
		ports <- guest
		return host
	}
	host := connect()
	hctx, hcancel := context.WithTimeout(ctx, testTimeout)
	defer hcancel()
	sess, err := proto.ClientHandshake(hctx, host)
	if err != nil {
		t.Fatal(err)
	}
	_, pids := startSleeper(t, sess)
	host.Close() // the daemon goes away
	for _, pid := range pids {
		eventually(t, 5*time.Second, fmt.Sprintf("pid %d to die", pid), func() bool { return gone(pid) })
	}

	host = connect()
	sess, err = proto.ClientHandshake(hctx, host)
	if err != nil {
		t.Fatal(err)
	}
	var pong proto.Pong
	if err := result(t, sess, proto.Request{Method: proto.MethodPing}, &pong); err != nil {
		t.Fatal(err)
	}
	if opens.Load() != 2 || readies.Load() != 1 {
		t.Fatalf("%d opens, %d ready events", opens.Load(), readies.Load())
	}
}

func TestLoopRetriesOpen(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var logs bytes.Buffer
	var opens atomic.Int32
	a := &agent{
		srv:   newTestServer(t),
		log:   slog.New(newRateLimited(slog.NewTextHandler(&logs, nil), time.Hour)),
		retry: time.Millisecond,
		open: func() (io.ReadWriteCloser, error) {
			if opens.Add(1) == 3 {
				cancel()
			}
			return nil, errors.New("no port")
		},
		ready: func() { t.Error("ready without a port") },
	}
	done := make(chan struct{})
	go func() { defer close(done); a.loop(ctx) }()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("loop did not end")
	}
	if n := strings.Count(logs.String(), "open agent port"); n != 1 {
		t.Fatalf("logged %d times (rate limit):\n%s", n, logs.String())
	}
}

// A restored guest hears a new host's Hello in the middle of its old
// session: that session ends and the next one runs on the same port,
// without closing and opening it again.
func TestLoopKeepsPortAfterProtocolError(t *testing.T) {
	_, host, opens := onePortAgent(t)
	hctx, hcancel := context.WithTimeout(context.Background(), testTimeout)
	defer hcancel()
	for i := range 2 {
		// The second handshake is what a new daemon does after a restore:
		// its Hellos reach the old session first.
		sess, err := proto.ClientHandshake(hctx, keepOpen{host})
		if err != nil {
			t.Fatalf("handshake %d: %v", i, err)
		}
		var pong proto.Pong
		if err := result(t, sess, proto.Request{Method: proto.MethodPing}, &pong); err != nil {
			t.Fatalf("ping in session %d: %v", i, err)
		}
		// The old daemon goes away without a word (its process ended):
		// stop its session's reader, keep the connection.
		host.SetReadDeadline(time.Now())
		<-sess.CloseChan()
		host.SetReadDeadline(time.Time{})
	}
	if n := opens.Load(); n != 1 {
		t.Fatalf("port opened %d times, want 1", n)
	}
}

// keepOpen is a connection whose Close leaves it open.
type keepOpen struct{ net.Conn }

func (keepOpen) Close() error { return nil }

// Detach ends the session after its answer; the agent waits on the same
// port for the next Hello, which it answers at once (a VM saved then
// resumes straight into that handshake).
func TestDetachThenHandshakeOnSamePort(t *testing.T) {
	a, host, opens := onePortAgent(t)
	hctx, hcancel := context.WithTimeout(context.Background(), testTimeout)
	defer hcancel()
	sess, err := proto.ClientHandshake(hctx, keepOpen{host})
	if err != nil {
		t.Fatal(err)
	}
	if err := result(t, sess, proto.Request{Method: proto.MethodDetach}, nil); err != nil {
		t.Fatalf("detach: %v", err)
	}
	// The guest's session ends: the host's sees no more answers.
	host.SetReadDeadline(time.Now())
	<-sess.CloseChan()
	host.SetReadDeadline(time.Time{})
	eventually(t, 5*time.Second, "the agent to wait for a new handshake", func() bool {
		h := a.srv.handshakeTimes()
		return h.opened.After(h.ready)
	})
	sess, err = proto.ClientHandshake(hctx, keepOpen{host})
	if err != nil {
		t.Fatalf("handshake after detach: %v", err)
	}
	var pong proto.Pong
	if err := result(t, sess, proto.Request{Method: proto.MethodPing}, &pong); err != nil {
		t.Fatalf("ping after detach: %v", err)
	}
	if n := opens.Load(); n != 1 {
		t.Fatalf("port opened %d times, want 1", n)
	}
}

// onePortAgent runs the port loop of an agent whose port is one end of a
// pipe (opening it again blocks until the test ends); it returns the
// agent, the host's end and the count of opens.
func onePortAgent(t *testing.T) (*agent, net.Conn, *atomic.Int32) {
	host, guest := net.Pipe()
	opens := new(atomic.Int32)
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{
		srv: newTestServer(t),
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		open: func() (io.ReadWriteCloser, error) {
			if opens.Add(1) > 1 {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return guest, nil
		},
		ready: func() {},
	}
	done := make(chan struct{})
	go func() { defer close(done); a.loop(ctx) }()
	t.Cleanup(func() { cancel(); host.Close(); <-done })
	return a, host, opens
}
