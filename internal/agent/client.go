// Package agent is the host side of the guest agent: a Client per VM that
// keeps one session (internal/agent/proto) over the VM's agent channel,
// reconnecting by itself after the daemon restarts or the VM is restored
// into a new VMM process, and offers each guest call as a method.
//
// The channel is reached through a Dialer: a unix socket to QEMU's
// virtio-serial chardev here; vsock where the host has it.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

// Dialer opens the byte stream to a VM's agent.
type Dialer interface {
	Dial(ctx context.Context) (net.Conn, error)
}

// UnixDialer dials a unix socket: QEMU's chardev of the agent's
// virtio-serial port.
type UnixDialer string

// Dial implements Dialer.
func (p UnixDialer) Dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", string(p))
}

// ErrClosed is returned by calls on a closed Client.
var ErrClosed = errors.New("agent: client closed")

// Client talks to one VM's agent. Safe for concurrent use: calls share one
// session, each on its own stream.
type Client struct {
	dialer Dialer
	log    *slog.Logger
	bulk   *bulkConn // nil: no bulk channel

	// life ends with Close: it interrupts a connect in progress, which
	// holds mu.
	life     context.Context
	endLife  context.CancelFunc
	mu       sync.Mutex // guards the fields below
	sess     *yamux.Session
	detached *yamux.Session // a session the guest left (Detach), still connected
	closed   bool
}

// Option configures a Client.
type Option func(*Client)

// WithBulk gives the client the VM's bulk channel (proto/bulk.go), which
// cp uses for file contents.
func WithBulk(d Dialer) Option {
	return func(c *Client) { c.bulk = &bulkConn{dialer: d} }
}

// New returns a client that connects on first use. log may be nil.
func New(d Dialer, log *slog.Logger, opts ...Option) *Client {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{dialer: d, log: log}
	c.life, c.endLife = context.WithCancel(context.Background())
	for _, o := range opts {
		o(c)
	}
	return c
}

// Close ends the session. Calls in flight fail.
func (c *Client) Close() {
	c.endLife()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.sess != nil {
		c.sess.Close()
		c.sess = nil
	}
	c.dropDetachedLocked()
	if c.bulk != nil {
		c.bulk.reset()
	}
}

// Reset drops the current session; the next call connects again. Use it
// when the VMM process behind the dialer was replaced.
func (c *Client) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess != nil {
		c.sess.Close()
		c.sess = nil
	}
}

// session returns the live session, connecting (and retrying while the
// agent is not up yet) until ctx ends.
func (c *Client) session(ctx context.Context) (*yamux.Session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.sess != nil && !c.sess.IsClosed() {
		return c.sess, nil
	}
	c.sess = nil
	// The port serves one connection at a time: a session the guest left
	// must let go of it first (the guest then sees the host reconnect).
	c.dropDetachedLocked()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.life, cancel)()
	backoff := 10 * time.Millisecond
	for {
		sess, err := c.connect(ctx)
		if err == nil {
			c.sess = sess
			return sess, nil
		}
		if c.life.Err() != nil {
			return nil, ErrClosed
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("agent: connect: %w (last error: %v)", ctx.Err(), err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("agent: connect: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 200*time.Millisecond)
	}
}

func (c *Client) connect(ctx context.Context) (*yamux.Session, error) {
	conn, err := c.dialer.Dial(ctx)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	sess, err := proto.ClientHandshake(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c.log.Debug("agent session open", "took", time.Since(t0))
	return sess, nil
}

// Connect makes sure a session is up, connecting if needed. Call it
// before a restored guest resumes, so that the first call after the resume
// finds the handshake already under way.
func (c *Client) Connect(ctx context.Context) error {
	_, err := c.session(ctx)
	return err
}

// open starts a call: a new stream whose first frame is req. A stream that
// cannot be opened on a stale session is retried once on a new session.
func (c *Client) open(ctx context.Context, req proto.Request) (*yamux.Stream, error) {
	for attempt := 0; ; attempt++ {
		sess, err := c.session(ctx)
		if err != nil {
			return nil, err
		}
		st, err := sess.OpenStream()
		if err == nil {
			if dl, ok := ctx.Deadline(); ok {
				_ = st.SetDeadline(dl)
			}
			if err = proto.WriteJSON(st, proto.TypeHeader, req); err == nil {
				return st, nil
			}
			st.Close()
		}
		if attempt > 0 {
			return nil, fmt.Errorf("agent: %s: %w", req.Method, err)
		}
		c.mu.Lock()
		if c.sess == sess {
			c.sess.Close()
			c.sess = nil
		}
		c.mu.Unlock()
	}
}

// call runs a method whose reply is one Result frame decoded into out.
func (c *Client) call(ctx context.Context, req proto.Request, out any) error {
	st, err := c.open(ctx, req)
	if err != nil {
		return err
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	if err := proto.ReadJSON(st, proto.TypeResult, out); err != nil {
		return fmt.Errorf("agent: %s: %w", req.Method, err)
	}
	return nil
}

// Detach asks the agent to end the current session and wait for the next
// handshake on its port, as it does after a restore, while the host stays
// connected (a disconnect would make the guest wait for the host to come
// back, polling). A VM saved right after resumes straight into its
// handshake. Without a session there is nothing to detach. The next call
// connects anew.
func (c *Client) Detach(ctx context.Context) error {
	c.mu.Lock()
	sess := c.sess
	c.mu.Unlock()
	if sess == nil || sess.IsClosed() {
		return nil
	}
	if err := c.call(ctx, proto.Request{Method: proto.MethodDetach}, nil); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == sess {
		c.sess = nil
		c.dropDetachedLocked()
		c.detached = sess
	}
	return nil
}

func (c *Client) dropDetachedLocked() {
	if c.detached != nil {
		c.detached.Close()
		c.detached = nil
	}
}

// Ping checks that the agent answers.
func (c *Client) Ping(ctx context.Context) error {
	var pong proto.Pong
	if err := c.call(ctx, proto.Request{Method: proto.MethodPing}, &pong); err != nil {
		return err
	}
	if pong.Version != proto.Version {
		return fmt.Errorf("agent: protocol version %d, want %d", pong.Version, proto.Version)
	}
	return nil
}

// Stat describes a path in the guest.
func (c *Client) Stat(ctx context.Context, req proto.StatRequest) (proto.PathInfo, error) {
	var info proto.PathInfo
	err := c.call(ctx, proto.Request{Method: proto.MethodStat, Stat: &req}, &info)
	return info, err
}

// Shutdown asks the guest to stop its program gracefully (SIGTERM, then
// SIGKILL after the stop timeout) and power off. It does not wait.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.call(ctx, proto.Request{Method: proto.MethodShutdown}, nil)
}

// SetNetwork gives a guest interface a new MAC, address and default route.
func (c *Client) SetNetwork(ctx context.Context, req proto.NetworkRequest) error {
	return c.call(ctx, proto.Request{Method: proto.MethodSetNetwork, Network: &req}, nil)
}

// SetHostname sets the guest's hostname.
func (c *Client) SetHostname(ctx context.Context, name string) error {
	return c.call(ctx, proto.Request{Method: proto.MethodSetHostname, Hostname: name}, nil)
}

// SetTime steps the guest's clock to t.
func (c *Client) SetTime(ctx context.Context, t time.Time) error {
	return c.call(ctx, proto.Request{Method: proto.MethodSetTime, TimeUnixNano: t.UnixNano()}, nil)
}

// AddEntropy mixes b into the guest's random pool and credits it.
func (c *Client) AddEntropy(ctx context.Context, b []byte) error {
	return c.call(ctx, proto.Request{Method: proto.MethodAddEntropy, Entropy: b}, nil)
}

// Refresh applies what a resumed guest needs in one call: the clock
// always; a network identity, hostname and entropy when given.
// It returns how long each part took in the guest.
func (c *Client) Refresh(ctx context.Context, t time.Time, network *proto.NetworkRequest, hostname string, entropy []byte) (proto.RefreshResult, error) {
	var res proto.RefreshResult
	err := c.call(ctx, proto.Request{Method: proto.MethodRefresh, TimeUnixNano: t.UnixNano(),
		Network: network, Hostname: hostname, Entropy: entropy}, &res)
	return res, err
}
