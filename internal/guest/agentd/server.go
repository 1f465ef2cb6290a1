package agentd

import (
	"context"
	"errors"
	"fmt"
	"github.com/hypeman-vm/hypeman/internal/guest/guestos"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

// chunkSize is the size of the Data frames the agent sends. Large frames
// matter under emulation, where every frame costs guest CPU.
const chunkSize = 256 << 10

// Config configures a Server. The zero value serves the agent's own
// environment and working directory.
type Config struct {
	// Log receives unexpected failures; nil discards them.
	Log *slog.Logger
	// Env is the base environment of exec'd commands (each request's Env
	// overrides it); nil means the agent's own environment, which init
	// sets to the program's.
	Env []string
	// Dir is the working directory of exec'd commands that name none;
	// empty means the agent's own.
	Dir string
	// HostnameFile is rewritten by set_hostname when it exists; empty
	// means /etc/hostname.
	HostnameFile string
}

// Server serves agent calls. It is safe for concurrent use: Serve and
// Handle may run on many sessions and streams at once.
type Server struct {
	log          *slog.Logger
	dir          string
	hostnameFile string

	mu  sync.Mutex
	env []string // guarded by mu: set_hostname updates HOSTNAME

	known   *knownLink     // guarded by mu: the interface configured last
	hs      handshakeTimes // guarded by mu: the last session change
	urandom int            // guarded by mu: /dev/urandom's fd plus one; 0: none

	// bulk is the bulk channel, nil when the VM has none.
	bulk *bulkPort

	// Seams for the calls whose real effect reaches outside any namespace
	// a test can make (tests replace them).
	signalInit func() error
	setClock   func(ns int64) error
}

// handshakeTimes are when the agent's last session ended, when its port
// was open again and when the next handshake completed: a refresh reports
// them (a resumed guest's path from its old session to its new one).
type handshakeTimes struct {
	ended, opened, ready time.Time
}

// SessionEnded, PortOpened and SessionReady record the agent's session
// changes.
func (s *Server) SessionEnded() { s.markHandshake(func(h *handshakeTimes) { h.ended = time.Now() }) }
func (s *Server) PortOpened()   { s.markHandshake(func(h *handshakeTimes) { h.opened = time.Now() }) }
func (s *Server) SessionReady() { s.markHandshake(func(h *handshakeTimes) { h.ready = time.Now() }) }

func (s *Server) markHandshake(f func(*handshakeTimes)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.hs)
}

func (s *Server) handshakeTimes() handshakeTimes {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hs
}

// New returns a Server.
func New(cfg Config) *Server {
	s := &Server{
		log:          cfg.Log,
		dir:          cfg.Dir,
		hostnameFile: cfg.HostnameFile,
		env:          cfg.Env,
		signalInit:   signalInit,
		setClock:     setClock,
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.env == nil {
		s.env = os.Environ()
	}
	if s.dir == "" {
		if wd, err := os.Getwd(); err == nil {
			s.dir = wd
		} else {
			s.dir = "/"
		}
	}
	if s.hostnameFile == "" {
		s.hostnameFile = "/etc/hostname"
	}
	return s
}

// Serve accepts the streams of sess and handles each in its own goroutine
// until the session ends (the host went away, or a new Hello broke the
// session) or ctx is done. Before returning it closes sess, cancels every
// call still running (killing the processes they started) and waits for
// them. It returns the reason the session ended.
func (s *Server) Serve(ctx context.Context, sess *yamux.Session) error {
	ctx, cancel := context.WithCancel(ctx)
	ctx = context.WithValue(ctx, endSessionKey{}, cancel)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		_ = sess.Close()
		wg.Wait()
	}()
	go func() {
		// Unblock Accept when the caller gives up.
		<-ctx.Done()
		_ = sess.Close()
	}()
	for {
		st, err := sess.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Handle(ctx, st)
		}()
	}
}

// handler serves one call whose header was req. A returned error is sent to
// the client as a TypeError frame.
type handler func(s *Server, ctx context.Context, st io.ReadWriter, req *proto.Request) error

// route returns the handler of a method, nil for an unknown one.
func route(method string) handler {
	switch method {
	case proto.MethodPing:
		return (*Server).ping
	case proto.MethodExec:
		return (*Server).exec
	case proto.MethodCopyTo:
		return (*Server).copyTo
	case proto.MethodCopyFrom:
		return (*Server).copyFrom
	case proto.MethodStat:
		return (*Server).stat
	case proto.MethodShutdown:
		return (*Server).shutdown
	case proto.MethodSetNetwork:
		return (*Server).setNetwork
	case proto.MethodSetHostname:
		return (*Server).setHostname
	case proto.MethodSetTime:
		return (*Server).setTime
	case proto.MethodAddEntropy:
		return (*Server).addEntropy
	case proto.MethodRefresh:
		return (*Server).refresh
	case proto.MethodBench:
		return (*Server).bench
	case proto.MethodDetach:
		return (*Server).detach
	}
	return nil
}

// Handle serves one call on st: it reads the Request header, runs the
// method and closes st. Cancelling ctx ends the call (an exec's processes
// are killed). Handle runs the method in the calling goroutine, so a
// caller that has moved its thread into other namespaces (as the tests do)
// gets the method's system calls made there.
func (s *Server) Handle(ctx context.Context, st io.ReadWriteCloser) {
	defer st.Close()
	var req proto.Request
	if err := proto.ReadJSON(st, proto.TypeHeader, &req); err != nil {
		return // the client went away before asking anything
	}
	h := route(req.Method)
	if h == nil {
		_ = sendError(st, fmt.Errorf("unknown method %q", req.Method))
		return
	}
	if err := h(s, ctx, st, &req); err != nil {
		_ = sendError(st, err)
	}
}

func sendError(w io.Writer, err error) error {
	return proto.WriteJSON(w, proto.TypeError, proto.Error{
		Message:  err.Error(),
		NotFound: errors.Is(err, fs.ErrNotExist),
	})
}

func sendResult(w io.Writer, v any) error {
	if v == nil {
		v = struct{}{}
	}
	return proto.WriteJSON(w, proto.TypeResult, v)
}

func errMissing(method string) error {
	return fmt.Errorf("%s: request has no %s part", method, method)
}

// endSessionKey carries, in a call's context, the function that ends the
// session the call came in.
type endSessionKey struct{}

// detach answers, then ends the session: the agent goes back to waiting
// for a Hello on the same open port. A VM saved in that state resumes
// straight into its handshake instead of first tearing an old session
// down (under emulation, tens of milliseconds of cold code).
func (s *Server) detach(ctx context.Context, st io.ReadWriter, _ *proto.Request) error {
	if err := sendResult(st, nil); err != nil {
		return err
	}
	if end, ok := ctx.Value(endSessionKey{}).(context.CancelFunc); ok {
		end()
	}
	return nil
}

func (s *Server) ping(_ context.Context, st io.ReadWriter, _ *proto.Request) error {
	return sendResult(st, proto.Pong{Version: proto.Version})
}

// baseEnv returns a copy of the environment exec'd commands start from.
func (s *Server) baseEnv() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.env...)
}

// setBaseEnv sets key in the base environment if it is there.
func (s *Server) setBaseEnv(key, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, kv := range s.env {
		if k, _, ok := strings.Cut(kv, "="); ok && k == key {
			s.env[i] = key + "=" + value
		}
	}
}

// mergeEnv returns base with the keys of over replaced or appended (new
// keys in sorted order, so the result does not depend on map order).
func mergeEnv(base []string, over map[string]string) []string {
	out := make([]string, 0, len(base)+len(over))
	seen := make(map[string]bool, len(over))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if v, ok := over[k]; ok {
			if seen[k] {
				continue
			}
			seen[k] = true
			kv = k + "=" + v
		}
		out = append(out, kv)
	}
	var extra []string
	for k := range over {
		if !seen[k] {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	for _, k := range extra {
		out = append(out, k+"="+over[k])
	}
	return out
}

func envValue(env []string, key string) string { return guestos.EnvValue(env, key) }

// rateLimited is a slog.Handler that drops a record whose message was
// already logged within the interval: an agent that cannot open its port
// retries forever and must not flood the console (the app log).
type rateLimited struct {
	slog.Handler
	every time.Duration
	mu    *sync.Mutex
	last  map[string]time.Time // guarded by mu
}

func newRateLimited(h slog.Handler, every time.Duration) *rateLimited {
	return &rateLimited{Handler: h, every: every, mu: &sync.Mutex{}, last: map[string]time.Time{}}
}

func (r *rateLimited) Handle(ctx context.Context, rec slog.Record) error {
	r.mu.Lock()
	t, ok := r.last[rec.Message]
	drop := ok && rec.Time.Sub(t) < r.every
	if !drop {
		r.last[rec.Message] = rec.Time
	}
	r.mu.Unlock()
	if drop {
		return nil
	}
	return r.Handler.Handle(ctx, rec)
}

func (r *rateLimited) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &rateLimited{Handler: r.Handler.WithAttrs(attrs), every: r.every, mu: r.mu, last: r.last}
}

func (r *rateLimited) WithGroup(name string) slog.Handler {
	return &rateLimited{Handler: r.Handler.WithGroup(name), every: r.every, mu: r.mu, last: r.last}
}
