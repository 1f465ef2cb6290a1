package agentd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/hypeman-vm/hypeman/internal/guest/guestos"
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

// Exit codes with the shell's meanings.
const (
	codeTimeout       = 124
	codeNotExecutable = guestos.CodeNotExecutable
	codeNotFound      = guestos.CodeNotFound
	codeWaitFailed    = 255
)

const defaultPath = guestos.DefaultPath

// drainGrace is how long output may keep arriving after the command
// exited. Output normally ends sooner, with EOF (pipe) or EIO (pty) once
// the last writer is gone; a background process that inherited the pipe
// or terminal keeps it open, and then only what is already buffered is
// sent after this grace.
const drainGrace = 250 * time.Millisecond

// maxDrainReads bounds the final drain, against a background process that
// writes as fast as we read.
const maxDrainReads = 64

func (s *Server) exec(ctx context.Context, st io.ReadWriter, req *proto.Request) error {
	r := req.Exec
	if r == nil {
		return errMissing(proto.MethodExec)
	}
	c, code, err := s.start(r)
	if err != nil {
		_ = proto.WriteJSON(st, proto.TypeExit, proto.Exit{Code: code, Error: err.Error()})
		return nil
	}
	c.run(ctx, st, time.Duration(r.TimeoutSeconds)*time.Second)
	return nil
}

// command is a started exec.
type command struct {
	proc *os.Process
	// out is the read end of the output pipe, or the pty master.
	out *os.File
	// stdin is the write end of the stdin pipe; nil for a TTY (input goes
	// to out, the master).
	stdin *os.File

	mu     sync.Mutex
	reaped bool // guarded by mu: the leader's pid may have been reused
}

// start resolves and starts the command of r. On failure it returns the
// exit code to report (126 or 127).
func (s *Server) start(r *proto.ExecRequest) (*command, int, error) {
	argv := r.Command
	if len(argv) == 0 {
		argv = []string{"/bin/sh"}
	}
	env := mergeEnv(s.baseEnv(), r.Env)
	if r.TTY && envValue(env, "TERM") == "" {
		env = append(env, "TERM=xterm")
	}
	dir := r.Cwd
	if dir == "" {
		dir = s.dir
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		if err == nil {
			err = fmt.Errorf("%s: not a directory", dir)
		}
		return nil, codeNotExecutable, fmt.Errorf("working directory: %w", err)
	}
	path, code, err := guestos.LookPath(argv[0], guestos.EnvValue(env, "PATH"), dir)
	if err != nil {
		return nil, code, err
	}
	attr := &os.ProcAttr{Dir: dir, Env: env}
	var c *command
	if r.TTY {
		c, err = startTTY(path, argv, attr, r.Rows, r.Cols)
	} else {
		c, err = startPipes(path, argv, attr)
	}
	if err != nil {
		code = codeNotExecutable
		if errors.Is(err, fs.ErrNotExist) {
			code = codeNotFound // e.g. a script whose interpreter is missing
		}
		return nil, code, err
	}
	return c, 0, nil
}

// startPipes starts a command whose stdout and stderr share one pipe.
func startPipes(path string, argv []string, attr *os.ProcAttr) (*command, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	attr.Files = []*os.File{inR, outW, outW}
	attr.Sys = &syscall.SysProcAttr{Setsid: true}
	p, err := os.StartProcess(path, argv, attr)
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, err
	}
	return &command{proc: p, out: outR, stdin: inW}, nil
}

// startTTY starts a command on a new pseudo-terminal that becomes its
// controlling terminal.
func startTTY(path string, argv []string, attr *os.ProcAttr, rows, cols uint16) (*command, error) {
	master, slave, err := openPTY()
	if err != nil {
		return nil, fmt.Errorf("open pty: %w", err)
	}
	if rows == 0 {
		rows = 24
	}
	if cols == 0 {
		cols = 80
	}
	if err := setSize(master, rows, cols); err != nil {
		master.Close()
		slave.Close()
		return nil, fmt.Errorf("pty size: %w", err)
	}
	attr.Files = []*os.File{slave, slave, slave}
	attr.Sys = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	p, err := os.StartProcess(path, argv, attr)
	slave.Close()
	if err != nil {
		master.Close()
		return nil, err
	}
	return &command{proc: p, out: master}, nil
}

// openPTY opens a new pseudo-terminal pair. The master is non-blocking so
// that it goes through Go's poller (reads can be interrupted and given
// deadlines); creack/pty's Open cannot give that, as it calls Fd(), which
// makes the master blocking.
func openPTY() (master, slave *os.File, err error) {
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(mfd)
		return nil, nil, fmt.Errorf("unlock: %w", err)
	}
	sfd, err := openPeer(mfd)
	if err != nil {
		unix.Close(mfd)
		return nil, nil, err
	}
	return os.NewFile(uintptr(mfd), "/dev/ptmx"), os.NewFile(uintptr(sfd), "pty"), nil
}

// openPeer opens the slave of master: with TIOCGPTPEER (Linux 4.13+), which
// needs no path, else by its /dev/pts name.
func openPeer(mfd int) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(mfd), unix.TIOCGPTPEER,
		uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno == 0 {
		return int(fd), nil
	}
	n, err := unix.IoctlGetUint32(mfd, unix.TIOCGPTN)
	if err != nil {
		return -1, fmt.Errorf("pty number: %w", err)
	}
	return unix.Open(fmt.Sprintf("/dev/pts/%d", n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
}

func setSize(master *os.File, rows, cols uint16) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	err = rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
	if err != nil {
		return err
	}
	return ioErr
}

// run streams the command's input and output over st until it exits, then
// sends its Exit. If the stream breaks, ctx ends or the timeout passes,
// the command's process group is killed; only the timeout still reports
// an Exit (124). The goroutines reading st and writing output may outlive
// run until the caller closes st (Handle does, when the call returns).
func (c *command) run(ctx context.Context, st io.ReadWriter, timeout time.Duration) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	waited := make(chan waitResult, 1)
	go func() {
		ps, err := c.wait()
		waited <- waitResult{ps, err}
	}()
	go c.pumpInput(st, cancel)
	outDone := make(chan error, 1)
	go func() {
		err := pumpOutput(st, c.out)
		if err != nil {
			cancel() // the client is gone
		}
		outDone <- err
	}()
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	var res waitResult
	timedOut := false
	select {
	case res = <-waited:
	case <-ctx.Done():
		c.abandon(waited)
		return
	case <-expired:
		timedOut = true
		c.kill()
		res = <-waited
	}
	// Everything the command wrote is in the pipe or pty by now: send it
	// before the Exit.
	_ = c.out.SetReadDeadline(time.Now().Add(drainGrace))
	select {
	case err := <-outDone:
		if err != nil {
			c.closeFiles()
			return
		}
	case <-ctx.Done():
		c.closeFiles()
		return
	}
	c.closeFiles()
	exit := proto.Exit{Code: codeTimeout}
	if !timedOut {
		exit = res.exit()
	}
	_ = proto.WriteJSON(st, proto.TypeExit, exit)
}

// wait waits for the leader to exit without reaping it, marks it reaped,
// then reaps it. Until then its pid stays taken (a zombie), so kill can
// never signal a process group that reused it.
func (c *command) wait() (*os.ProcessState, error) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, c.proc.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			break
		}
	}
	c.mu.Lock()
	c.reaped = true
	c.mu.Unlock()
	return c.proc.Wait()
}

// kill sends SIGKILL to the command's process group, if its leader is not
// reaped yet.
func (c *command) kill() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.reaped {
		_ = unix.Kill(-c.proc.Pid, unix.SIGKILL)
	}
}

// abandon kills a command whose client is gone and waits for it.
func (c *command) abandon(waited <-chan waitResult) {
	c.kill()
	<-waited
	c.closeFiles()
}

func (c *command) closeFiles() {
	c.out.Close()
	if c.stdin != nil {
		c.stdin.Close()
	}
}

type waitResult struct {
	ps  *os.ProcessState
	err error
}

// exit is the Exit of a command that ended: its exit status, or 128 plus
// the signal that killed it.
func (r waitResult) exit() proto.Exit {
	if r.err != nil || r.ps == nil {
		return proto.Exit{Code: codeWaitFailed, Error: fmt.Sprintf("wait: %v", r.err)}
	}
	if ws, ok := r.ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return proto.Exit{Code: 128 + int(ws.Signal())}
	}
	return proto.Exit{Code: r.ps.ExitCode()}
}

// pumpInput feeds the client's frames to the command until the stream
// ends; a stream that ends (or breaks) calls gone, which kills the command
// if it still runs.
func (c *command) pumpInput(st io.Reader, gone func()) {
	var buf []byte
	for {
		typ, p, err := proto.ReadMsg(st, buf)
		if err != nil {
			gone()
			c.kill()
			return
		}
		buf = p
		switch typ {
		case proto.TypeData:
			c.writeInput(p)
		case proto.TypeEOF:
			c.closeInput()
		case proto.TypeResize:
			var rs proto.Resize
			if json.Unmarshal(p, &rs) == nil && c.stdin == nil && rs.Rows > 0 && rs.Cols > 0 {
				_ = setSize(c.out, rs.Rows, rs.Cols)
			}
		}
	}
}

func (c *command) writeInput(p []byte) {
	if c.stdin != nil {
		_, _ = c.stdin.Write(p) // fails once the command closed its stdin
		return
	}
	_, _ = c.out.Write(p)
}

// closeInput closes a pipe's stdin; on a terminal it types the EOF
// character (^D), which is what closing the input means there.
func (c *command) closeInput() {
	if c.stdin != nil {
		c.stdin.Close()
		return
	}
	_, _ = c.out.Write([]byte{4})
}

// pumpOutput sends what f yields as Data frames until its end: EOF for a
// pipe, EIO for a pty master whose terminal is closed. When the read
// deadline passes (set once the command exited) it sends only what is
// already buffered. It returns an error only when the stream failed.
func pumpOutput(w io.Writer, f *os.File) error {
	buf := make([]byte, chunkSize)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if werr := proto.WriteMsg(w, proto.TypeData, buf[:n]); werr != nil {
				return werr
			}
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return drain(w, f, buf)
		}
		return nil // EOF, EIO, or closed: the output is over
	}
}

// drain sends what f holds right now, without waiting for more.
func drain(w io.Writer, f *os.File, buf []byte) error {
	if f.SetReadDeadline(time.Time{}) != nil {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	for range maxDrainReads {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), buf)
			return true // never wait: f is non-blocking
		})
		if err != nil || rerr != nil || n <= 0 {
			return nil
		}
		if werr := proto.WriteMsg(w, proto.TypeData, buf[:n]); werr != nil {
			return werr
		}
	}
	return nil
}
