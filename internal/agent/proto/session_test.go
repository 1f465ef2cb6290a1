package proto

import (
	"bufio"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// echoServer accepts one session on conn and echoes every stream.
func echoServer(t *testing.T, ctx context.Context, conn io.ReadWriteCloser) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		sess, err := ServerHandshake(ctx, conn)
		if err != nil {
			done <- err
			return
		}
		for {
			st, err := sess.Accept()
			if err != nil {
				done <- err
				return
			}
			go func() { io.Copy(st, st); st.Close() }()
		}
	}()
	return done
}

func roundTrip(t *testing.T, sess *yamux.Session, msg string) {
	t.Helper()
	st, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo = %q, %v", buf, err)
	}
}

func TestHandshakeSkipsStaleBytes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host, guest := net.Pipe()
	// Bytes left over from an earlier connection reach the host first
	// (the guest answers only after them: a pipe write waits for the read).
	go func() {
		guest.Write([]byte("stale yamux bytes HMA1a0123456789abcdef"))
		echoServer(t, ctx, guest)
	}()
	sess, err := ClientHandshake(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, sess, "hello")
}

func TestRepeatedHellosBeforeSessionAreSkipped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host, guest := net.Pipe()
	echoServer(t, ctx, guest)
	nonce := []byte("0123456789abcdef")
	hello := handshakeFrame(kindHello, nonce)
	go func() {
		// A host whose first Hello went unanswered for a while sent three.
		host.Write(hello)
		host.Write(hello)
		host.Write(hello)
	}()
	r := bufio.NewReader(host)
	got, err := scanFrame(r, kindAck)
	if err != nil || string(got) != string(nonce) {
		t.Fatalf("ack %q %v", got, err)
	}
	sess, err := yamux.Client(bufferedConn{Conn: host, r: r}, SessionConfig())
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, sess, "after three hellos")
}

// eofPort reads as EOF until connected, like a virtio-serial port whose
// host side is not connected.
type eofPort struct {
	net.Conn
	connected chan struct{}
}

func (p *eofPort) Read(b []byte) (int, error) {
	select {
	case <-p.connected:
		return p.Conn.Read(b)
	default:
		return 0, io.EOF
	}
}

func TestGuestWaitsThroughEOFUntilHostConnects(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host, guest := net.Pipe()
	port := &eofPort{Conn: guest, connected: make(chan struct{})}
	echoServer(t, ctx, port)
	time.Sleep(100 * time.Millisecond) // the guest polls through EOFs
	close(port.connected)
	sess, err := ClientHandshake(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, sess, "connected")
}

func TestSessionEndsOnEOFAndANewOneStarts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host1, guest1 := net.Pipe()
	done := echoServer(t, ctx, guest1)
	sess, err := ClientHandshake(ctx, host1)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, sess, "first")
	host1.Close() // the daemon goes away
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("guest session did not end when the host disconnected")
	}
	host2, guest2 := net.Pipe()
	echoServer(t, ctx, guest2)
	sess2, err := ClientHandshake(ctx, host2)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, sess2, "second")
}

func TestFrames(t *testing.T) {
	pr, pw := io.Pipe()
	go func() {
		WriteJSON(pw, TypeHeader, Request{Method: MethodPing})
		WriteMsg(pw, TypeData, []byte("abc"))
		WriteJSON(pw, TypeError, Error{Message: "no such file", NotFound: true})
		pw.Close()
	}()
	var req Request
	if err := ReadJSON(pr, TypeHeader, &req); err != nil || req.Method != MethodPing {
		t.Fatalf("header %+v %v", req, err)
	}
	typ, p, err := ReadMsg(pr, nil)
	if err != nil || typ != TypeData || string(p) != "abc" {
		t.Fatalf("data %q %q %v", typ, p, err)
	}
	err = ReadJSON(pr, TypeResult, nil)
	var re *RemoteError
	if err == nil || !isRemoteNotFound(err, &re) {
		t.Fatalf("error frame: %v", err)
	}
}

func isRemoteNotFound(err error, re **RemoteError) bool {
	e, ok := err.(*RemoteError)
	*re = e
	return ok && e.NotFound
}

// An Ack that arrives in two pieces, the second after the host's read
// deadline expired and it sent Hello again, still completes the handshake.
func TestAckSplitAcrossHelloRepeats(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host, guest := net.Pipe()
	done := make(chan error, 1)
	go func() {
		r := bufio.NewReader(guest)
		nonce, err := scanFrame(r, kindHello)
		if err != nil {
			done <- err
			return
		}
		// Keep reading (net.Pipe blocks writers) while acking slowly.
		go io.Copy(io.Discard, r)
		ack := handshakeFrame(kindAck, nonce)
		guest.Write(ack[:9])
		time.Sleep(4 * helloFastInterval)
		_, err = guest.Write(ack[9:])
		done <- err
	}()
	start := time.Now()
	if _, err := ClientHandshake(ctx, host); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("handshake took %v", took)
	}
}

// A guest whose old session swallowed the first Hellos (every restored VM)
// hears the next one within a few milliseconds, not a slow interval.
func TestHellosRepeatFastFirst(t *testing.T) {
	if helloWait(0) != helloFastInterval || helloWait(helloFastCount-1) != helloFastInterval {
		t.Fatalf("first waits %v, %v", helloWait(0), helloWait(helloFastCount-1))
	}
	if helloWait(helloFastCount) != helloInterval {
		t.Fatalf("later wait %v", helloWait(helloFastCount))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host, guest := net.Pipe()
	go ClientHandshake(ctx, host)
	r := bufio.NewReader(guest)
	// The old session eats the first Hello; time the next one.
	if _, err := scanFrame(r, kindHello); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := scanFrame(r, kindHello); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took >= helloInterval {
		t.Fatalf("next Hello after %v, want well under %v", took, helloInterval)
	}
	host.Close()
}
