package agentd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
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
		open:  func() (io.ReadWriteCloser, error) { return openPort(vmconfig.PortAgent) },
		ready: func() { announceReady(ready) },
	}
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
// it ends, closes the port and starts over, until ctx ends.
func (a *agent) loop(ctx context.Context) {
	announced := false
	for ctx.Err() == nil {
		port, err := a.open()
		if err != nil {
			a.log.Error("open agent port", "err", err)
			sleep(ctx, a.retry)
			continue
		}
		if !announced {
			announced = true
			a.ready()
		}
		a.session(ctx, port)
		port.Close()
	}
}

// session serves one session on port.
func (a *agent) session(ctx context.Context, port io.ReadWriteCloser) {
	// Closing the port is what interrupts a handshake blocked in a read.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(hctx, func() { port.Close() })
	sess, err := proto.ServerHandshake(hctx, port)
	if !stop() || ctx.Err() != nil {
		if sess != nil {
			sess.Close()
		}
		return
	}
	if err != nil {
		if !errors.Is(err, io.EOF) {
			a.log.Error("agent handshake", "err", err)
		}
		sleep(ctx, handshakeRetry)
		return
	}
	// The session's end (EOF when the host disconnects, a protocol error
	// when a restored VM hears a new Hello mid-session) is routine.
	_ = a.srv.Serve(ctx, sess)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// openPort opens the virtio-serial port with the given name, non-blocking
// so that its reads and writes go through Go's poller and Close interrupts
// them. A port can be open only once at a time in the guest.
func openPort(name string) (*os.File, error) {
	ents, err := os.ReadDir("/sys/class/virtio-ports")
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/sys/class/virtio-ports", e.Name(), "name"))
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		dev := "/dev/" + e.Name()
		fd, err := unix.Open(dev, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: dev, Err: err}
		}
		return os.NewFile(uintptr(fd), dev), nil
	}
	return nil, fmt.Errorf("no virtio-serial port named %q", name)
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
