package agentd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime/metrics"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

// hostNameMax is Linux's HOST_NAME_MAX.
const hostNameMax = 64

// signalInit asks PID 1 to stop the VM: the guest init turns SIGTERM into
// SIGTERM for the program, SIGKILL after the stop timeout, and a power-off.
func signalInit() error {
	return unix.Kill(1, unix.SIGTERM)
}

func setClock(ns int64) error {
	ts := unix.NsecToTimespec(ns)
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

func (s *Server) shutdown(_ context.Context, st io.ReadWriter, _ *proto.Request) error {
	if err := s.signalInit(); err != nil {
		return fmt.Errorf("signal init: %w", err)
	}
	return sendResult(st, nil)
}

// setHostname sets the kernel's hostname, rewrites the hostname file if the
// image has one, and updates HOSTNAME in the environment of later execs
// if it is there.
func (s *Server) setHostname(_ context.Context, st io.ReadWriter, req *proto.Request) error {
	if err := s.applyHostname(req.Hostname); err != nil {
		return err
	}
	return sendResult(st, nil)
}

func (s *Server) applyHostname(name string) error {
	if err := s.setKernelHostname(name); err != nil {
		return err
	}
	return rewriteIfExists(s.hostnameFile, name+"\n")
}

// setKernelHostname sets the kernel's host name (what uname and hostname
// report) and the HOSTNAME of later commands.
func (s *Server) setKernelHostname(name string) error {
	if name == "" || len(name) > hostNameMax {
		return fmt.Errorf("set_hostname: invalid hostname %q", name)
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	s.setBaseEnv("HOSTNAME", name)
	return nil
}

// rewriteIfExists replaces the content of p in place (it may be a bind
// mount, which a rename could not replace), keeping its mode.
func rewriteIfExists(p, content string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (s *Server) setTime(_ context.Context, st io.ReadWriter, req *proto.Request) error {
	if req.TimeUnixNano <= 0 {
		return fmt.Errorf("set_time: invalid time %d", req.TimeUnixNano)
	}
	if err := s.setClock(req.TimeUnixNano); err != nil {
		return fmt.Errorf("clock_settime: %w", err)
	}
	return sendResult(st, nil)
}

// addEntropy mixes the host's random bytes into the kernel's pool and
// credits them: a clone resumes with its parent's pool and must not
// produce the same "random" numbers as its siblings.
func (s *Server) addEntropy(_ context.Context, st io.ReadWriter, req *proto.Request) error {
	if len(req.Entropy) == 0 {
		return errors.New("add_entropy: no bytes")
	}
	if err := s.mixEntropy(req.Entropy); err != nil {
		return err
	}
	return sendResult(st, nil)
}

// mixEntropy uses RNDADDENTROPY, which mixes the bytes in and credits them
// (struct rand_pool_info: int entropy_count in bits, int buf_size, then
// the bytes). Without CAP_SYS_ADMIN it falls back to a plain write, which
// mixes the bytes without crediting them. It uses the agent's open
// /dev/urandom when there is one (a clone's first call is then one ioctl).
func (s *Server) mixEntropy(b []byte) error {
	fd := s.urandomFD()
	if fd < 0 {
		var err error
		if fd, err = unix.Open("/dev/urandom", unix.O_WRONLY|unix.O_CLOEXEC, 0); err != nil {
			return fmt.Errorf("add entropy: %w", err)
		}
		defer unix.Close(fd)
	}
	info := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0])))
	if errno != 0 {
		if _, err := unix.Write(fd, b); err != nil {
			return fmt.Errorf("add entropy: %w (ioctl: %v)", err, errno)
		}
	}
	// Mixing alone changes only the input pool: the generator behind
	// /dev/urandom and getrandom keeps the key the snapshot holds until
	// its next reseed (up to a minute later on a guest up for more than
	// two), so clones of one snapshot would read the same stream until
	// then. Reseed it now from the pool that holds the host's bytes.
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.RNDRESEEDCRNG, 0); errno != 0 {
		return fmt.Errorf("reseed the random generator: %w", errno)
	}
	return nil
}

// openURandom keeps /dev/urandom open for mixEntropy.
func (s *Server) openURandom() {
	fd, err := unix.Open("/dev/urandom", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.urandom = fd + 1
}

func (s *Server) urandomFD() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.urandom - 1
}

func (s *Server) bench(_ context.Context, st io.ReadWriter, req *proto.Request) error {
	r := req.Bench
	if r == nil {
		return errMissing(proto.MethodBench)
	}
	if r.Upload {
		return benchUpload(st, r.Bytes)
	}
	return benchDownload(st, r.Bytes)
}

// benchUpload reads want bytes of Data (or up to an EOF) and answers.
func benchUpload(st io.ReadWriter, want int64) error {
	var got int64
	var buf []byte
	for got < want {
		typ, p, err := proto.ReadMsg(st, buf)
		if err != nil {
			return err
		}
		buf = p
		if typ == proto.TypeEOF {
			break
		}
		if typ != proto.TypeData {
			return fmt.Errorf("bench: unexpected frame %q", typ)
		}
		got += int64(len(p))
	}
	return sendResult(st, nil)
}

func benchDownload(w io.Writer, n int64) error {
	buf := make([]byte, chunkSize)
	for n > 0 {
		k := min(int64(len(buf)), n)
		if err := proto.WriteMsg(w, proto.TypeData, buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return proto.WriteMsg(w, proto.TypeEOF, nil)
}

// refresh applies, in one call, what a resumed guest needs: a new network
// identity, hostname and entropy (forks) and the clock (every resume).
// One round trip instead of four matters under emulation.
func (s *Server) refresh(_ context.Context, st io.ReadWriter, req *proto.Request) error {
	res := proto.RefreshResult{Micros: map[string]int64{}}
	if h := s.handshakeTimes(); !h.ready.IsZero() && h.ready.After(h.opened) {
		// How this session came to be: from the end of the last one to
		// the port open again, to the completed handshake, to this call.
		if h.opened.After(h.ended) && !h.ended.IsZero() {
			res.Micros["hs.reopen"] = h.opened.Sub(h.ended).Microseconds()
		}
		res.Micros["hs.handshake"] = h.ready.Sub(h.opened).Microseconds()
		res.Micros["hs.to-call"] = time.Since(h.ready).Microseconds()
	}
	gcBefore := gcCycles()
	timed := func(part string, f func() error) error {
		start := time.Now()
		err := f()
		res.Micros[part] = time.Since(start).Microseconds()
		return err
	}
	if req.Network != nil {
		if err := timed("network", func() error { return s.configureLink(req.Network, timed) }); err != nil {
			return fmt.Errorf("refresh: network: %w", err)
		}
	}
	if req.Hostname != "" {
		if err := timed("hostname", func() error { return s.setKernelHostname(req.Hostname) }); err != nil {
			return err
		}
	}
	if len(req.Entropy) > 0 {
		if err := timed("entropy", func() error { return s.mixEntropy(req.Entropy) }); err != nil {
			return err
		}
	}
	if req.TimeUnixNano > 0 {
		if err := timed("clock", func() error { return s.setClock(req.TimeUnixNano) }); err != nil {
			return fmt.Errorf("clock_settime: %w", err)
		}
	}
	res.Micros["gc.cycles"] = int64(gcCycles() - gcBefore)
	if err := sendResult(st, res); err != nil {
		return err
	}
	// /etc/hostname follows the kernel's name after the answer: rewriting
	// a file is cold file system code in a resumed clone (15-20 ms under
	// emulation), and nothing reads it on the way to Running.
	if req.Hostname != "" {
		if err := rewriteIfExists(s.hostnameFile, req.Hostname+"\n"); err != nil {
			s.log.Warn("write hostname file", "err", err)
		}
	}
	return nil
}

// gcCycles is how many GC cycles the agent has completed.
func gcCycles() uint64 {
	sample := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return sample[0].Value.Uint64()
}
