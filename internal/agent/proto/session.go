package proto

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// Handshake frames are fixed-size: magic, kind, 16-byte nonce.
var magic = []byte("HMA1")

const (
	kindHello byte = 'h'
	kindAck   byte = 'a'
	nonceLen       = 16
	frameLen       = 4 + 1 + nonceLen
)

// The host repeats Hello while it waits for the Ack: a guest that was
// mid-session when it was snapshotted (every restore and fork) consumes
// the first Hellos as a broken yamux frame and sees only the ones that
// arrive after its old session ended. The first repeats come quickly, so
// that a resumed guest waits a few milliseconds for its next Hello, not
// tens; later ones (a guest still booting) slowly, so that a port nobody
// reads yet does not fill with them.
const (
	helloFastInterval = 5 * time.Millisecond
	helloFastCount    = 40 // 200 ms of fast repeats
	helloInterval     = 50 * time.Millisecond
)

// helloWait is how long the host waits for an Ack after its n-th Hello.
func helloWait(n int) time.Duration {
	if n < helloFastCount {
		return helloFastInterval
	}
	return helloInterval
}

func handshakeFrame(kind byte, nonce []byte) []byte {
	return append(append(append([]byte{}, magic...), kind), nonce...)
}

// scanFrame reads from r until it finds a handshake frame of kind and
// returns its nonce. Any other bytes are skipped.
func scanFrame(r *bufio.Reader, kind byte) ([]byte, error) {
	var sc frameScanner
	return sc.scan(r, kind)
}

// frameScanner finds handshake frames in a byte stream; it keeps what it
// has seen across read errors, so that a frame split by a read deadline
// is still found when the rest arrives.
type frameScanner struct {
	window []byte
}

func (sc *frameScanner) scan(r *bufio.Reader, kind byte) ([]byte, error) {
	for {
		b, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		sc.window = append(sc.window, b)
		if len(sc.window) > frameLen {
			sc.window = sc.window[1:]
		}
		w := sc.window
		if len(w) == frameLen && bytes.Equal(w[:4], magic) && w[4] == kind {
			sc.window = nil
			return append([]byte{}, w[5:]...), nil
		}
	}
}

// SessionConfig is the yamux configuration of both sides.
func SessionConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	// A guest in standby is frozen: keepalives would only break sessions
	// that are about to be replaced anyway.
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 30 * time.Second
	c.MaxStreamWindowSize = 1 << 20
	c.AcceptBacklog = 512
	c.StreamOpenTimeout = 30 * time.Second
	c.StreamCloseTimeout = time.Minute
	c.LogOutput = io.Discard
	return c
}

// ClientHandshake opens a session over conn from the host side: it sends
// Hello until the guest answers with the matching Ack, or ctx ends.
func ClientHandshake(ctx context.Context, conn net.Conn) (*yamux.Session, error) {
	nonce := make([]byte, nonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	hello := handshakeFrame(kindHello, nonce)
	r := bufio.NewReader(conn)
	var acks frameScanner
	defer conn.SetDeadline(time.Time{})
	for n := 0; ; n++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("agent handshake: %w", err)
		}
		wait := helloWait(n)
		_ = conn.SetWriteDeadline(time.Now().Add(wait))
		if _, err := conn.Write(hello); err != nil && !isTimeout(err) {
			return nil, fmt.Errorf("agent handshake: %w", err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(wait))
		for {
			got, err := acks.scan(r, kindAck)
			if err != nil {
				if isTimeout(err) {
					break // send Hello again
				}
				return nil, fmt.Errorf("agent handshake: %w", err)
			}
			if bytes.Equal(got, nonce) {
				_ = conn.SetDeadline(time.Time{})
				return yamux.Client(bufferedConn{Conn: conn, r: r}, SessionConfig())
			}
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ServerHandshake waits on port for a Hello, answers it, and returns the
// guest side of the new session. While waiting, EOF (the host is not
// connected: a virtio-serial port reads as EOF until it is) is retried
// after a pause; once the session runs, EOF ends it.
func ServerHandshake(ctx context.Context, port io.ReadWriteCloser) (*yamux.Session, error) {
	pr := &portReader{ctx: ctx, r: port}
	pr.retryEOF.Store(true)
	r := bufio.NewReaderSize(pr, 64*1024)
	nonce, err := scanFrame(r, kindHello)
	if err != nil {
		return nil, err
	}
	if _, err := port.Write(handshakeFrame(kindAck, nonce)); err != nil {
		return nil, err
	}
	pr.retryEOF.Store(false)
	// The host repeats Hello until it sees the Ack, so more copies of this
	// Hello may follow; they all come before the host's first session byte.
	body := &skipHellos{r: r, hello: handshakeFrame(kindHello, nonce)}
	return yamux.Server(readWriteCloser{Reader: body, Writer: port, Closer: port}, SessionConfig())
}

// portReader turns EOF into a short wait and another read while retryEOF
// is set.
type portReader struct {
	ctx      context.Context
	r        io.Reader
	retryEOF atomic.Bool
}

func (p *portReader) Read(b []byte) (int, error) {
	for {
		n, err := p.r.Read(b)
		if n > 0 || !errors.Is(err, io.EOF) || !p.retryEOF.Load() {
			return n, err
		}
		select {
		case <-p.ctx.Done():
			return 0, p.ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// skipHellos drops copies of one Hello frame at the start of a stream.
type skipHellos struct {
	r     *bufio.Reader
	hello []byte
	done  bool
}

func (s *skipHellos) Read(p []byte) (int, error) {
	for !s.done {
		// Look at no more than what has arrived (plus one byte, to wait
		// for data): the host's first session frame may be shorter than a
		// Hello, and it waits for our answer.
		want := min(max(s.r.Buffered(), 1), len(s.hello))
		head, err := s.r.Peek(want)
		if err != nil {
			return 0, err
		}
		switch {
		case !bytes.HasPrefix(s.hello, head):
			s.done = true
		case len(head) == len(s.hello):
			_, _ = s.r.Discard(len(s.hello))
		default:
			if _, err := s.r.Peek(len(head) + 1); err != nil {
				return 0, err
			}
		}
	}
	return s.r.Read(p)
}

type readWriteCloser struct {
	io.Reader
	io.Writer
	io.Closer
}

// bufferedConn reads through the buffer the handshake filled.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
