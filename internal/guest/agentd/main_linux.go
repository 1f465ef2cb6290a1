package agentd

import (
	"context"
	"errors"
	"fmt"
	"github.com/hypeman-vm/hypeman/internal/guest/guestos"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
	"github.com/hypeman-vm/hypeman/internal/guest/events"
	"github.com/hypeman-vm/hypeman/internal/guest/vmconfig"
)

// ReadyFD is the file descriptor on which the agent reports agent_ready:
// init passes its events port there.
const ReadyFD = 3

// Retry pauses of the port loop.
const (
	openRetry      = time.Second
	handshakeRetry = 100 * time.Millisecond
	logEvery       = time.Minute
)

// Main runs the agent process. It never returns: it serves one session of
// the host after another, whatever fails.
func Main() {
	ready := readyFile(ReadyFD)
	log := slog.New(newRateLimited(slog.NewTextHandler(os.Stderr, nil), logEvery)).
		With("component", "hypeman-agent")
	a := &agent{
		srv:   New(Config{Log: log}),
		log:   log,
		retry: openRetry,
		open:  (&portOpener{name: vmconfig.PortAgent}).open,
		ready: func() { announceReady(ready) },
	}
	// Done now, while the guest is warm: a clone resumed from a snapshot
	// of this guest finds them ready (see network_linux.go, mixEntropy).
	a.srv.rememberLink()
	a.srv.openURandom()
	if port, err := openPort(vmconfig.PortBench); err == nil {
		go serveRawBench(port)
	}
	if port, err := openPort(proto.PortBulk); err == nil {
		a.srv.bulk = newBulkPort(port)
	}
	a.loop(context.Background())
}

// agent is the port loop of Main, with its effects replaceable in tests.
type agent struct {
	srv   *Server
	log   *slog.Logger
	open  func() (io.ReadWriteCloser, error)
	ready func() // called once, when the port first opened
	retry time.Duration
}

// loop opens the port, waits for the host's Hello, serves the session until
// it ends, and starts over, until ctx ends. The port stays open from one
// session to the next when it can (see sessionConn); it is closed and
// opened again after a failed handshake.
func (a *agent) loop(ctx context.Context) {
	announced := false
	var port io.ReadWriteCloser
	defer func() {
		if port != nil {
			port.Close()
		}
	}()
	for ctx.Err() == nil {
		if port == nil {
			p, err := a.open()
			if err != nil {
				a.log.Error("open agent port", "err", err)
				sleep(ctx, a.retry)
				continue
			}
			port = p
		}
		if !announced {
			announced = true
			a.ready()
		}
		a.srv.PortOpened()
		keep := a.session(ctx, port)
		a.srv.SessionEnded()
		if !keep {
			port.Close()
			port = nil
		}
	}
}

// deadliner is a port whose pending reads and writes a deadline can
// interrupt (an *os.File the runtime poller holds, a net.Conn).
type deadliner interface {
	SetDeadline(t time.Time) error
}

// sessionConn is the port as a session sees it: closing it interrupts the
// session's pending reads and writes instead of closing the port, so that
// the next session runs on the same open port. Right after a restore that
// saves the resumed guest closing and reopening its virtio-serial port
// (two control messages through cold code: 10-20 ms under emulation).
type sessionConn struct {
	io.ReadWriter
	d deadliner
}

func (c sessionConn) Close() error { return c.d.SetDeadline(time.Unix(1, 0)) }

// session serves one session on port. It reports whether port can serve
// the next one.
func (a *agent) session(ctx context.Context, port io.ReadWriteCloser) (keep bool) {
	var conn io.ReadWriteCloser = port
	d, ok := port.(deadliner)
	if ok && d.SetDeadline(time.Time{}) == nil {
		conn = sessionConn{ReadWriter: port, d: d}
	} else {
		d = nil
	}
	// Closing the port is what interrupts a handshake blocked in a read.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(hctx, func() { port.Close() })
	sess, err := proto.ServerHandshake(hctx, conn)
	if !stop() || ctx.Err() != nil {
		if sess != nil {
			sess.Close()
		}
		return false
	}
	if err != nil {
		if !errors.Is(err, io.EOF) {
			a.log.Error("agent handshake", "err", err)
		}
		sleep(ctx, handshakeRetry)
		return false
	}
	// The session's end (EOF when the host disconnects, a protocol error
	// when a restored VM hears a new Hello mid-session) is routine. Serve
	// closes the session, which waits for its reader and writer to stop.
	// After EOF the port is opened again (the host comes back to it, or a
	// test's port is gone for good); after a protocol error the host is
	// there, sending Hellos: the same port serves the next session.
	a.srv.SessionReady()
	err = a.srv.Serve(ctx, sess)
	return d != nil && ctx.Err() == nil && !errors.Is(err, io.EOF) && d.SetDeadline(time.Time{}) == nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// openPort opens a virtio-serial port non-blocking (guestos.OpenPort).
func openPort(name string) (*os.File, error) { return guestos.OpenPort(name, true) }

// portOpener opens one port again and again: by name the first time, then
// by the device path found then (a VM's ports keep their devices). Each
// new session reopens the port, and right after a restore that runs on a
// cold guest: scanning sysfs again would cost it tens of milliseconds.
type portOpener struct {
	name string
	dev  string
}

func (p *portOpener) open() (io.ReadWriteCloser, error) {
	if p.dev != "" {
		fd, err := unix.Open(p.dev, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
		if err == nil {
			return os.NewFile(uintptr(fd), p.dev), nil
		}
		p.dev = ""
	}
	f, err := openPort(p.name)
	if err != nil {
		return nil, err
	}
	p.dev = f.Name()
	return f, nil
}

// readyFile returns fd as a file if it is open and was inherited, nil
// otherwise. It must run before anything else opens files: a descriptor
// the Go runtime made for itself (epoll, eventfd) could take the number
// when init passed none.
func readyFile(fd int) *os.File {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return nil
	}
	if target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd)); err == nil &&
		strings.HasPrefix(target, "anon_inode:") {
		return nil
	}
	unix.CloseOnExec(fd) // exec'd commands must not inherit it
	return os.NewFile(uintptr(fd), "events")
}

// announceReady writes the agent_ready event to f and closes it.
func announceReady(f *os.File) {
	if f == nil {
		return
	}
	_, _ = f.Write(events.Marshal(events.Event{Type: events.TypeAgentReady, Time: time.Now().UTC()}))
	_ = f.Close()
}
