package initd

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/guest/events"
)

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// supervise starts the program and then acts as the reaper of every process
// in the VM until the program ends, then powers off.
func (g *guest) supervise() {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGINT, unix.SIGTERM)

	g.trace("start program")
	pid, err := g.startProgram()
	if err != nil {
		g.exitFailed(err)
	}
	g.emit(events.Event{Type: events.TypeProgramStart, PID: pid})

	var killTimer <-chan time.Time
	for {
		select {
		case s := <-sigs:
			if s == unix.SIGCHLD {
				if st, done := reap(pid); done {
					g.exited(st)
				}
				continue
			}
			if killTimer == nil {
				_ = unix.Kill(-pid, unix.SIGTERM)
				killTimer = time.After(time.Duration(g.cfg.StopTimeoutSeconds) * time.Second)
			}
		case <-killTimer:
			_ = unix.Kill(-pid, unix.SIGKILL)
		}
	}
}

// reap collects every exited child; done reports whether pid was among them.
func reap(pid int) (status unix.WaitStatus, done bool) {
	for {
		var st unix.WaitStatus
		got, err := unix.Wait4(-1, &st, unix.WNOHANG, nil)
		if err != nil || got <= 0 {
			return status, done
		}
		if got == pid {
			status, done = st, true
		}
	}
}

func (g *guest) exited(st unix.WaitStatus) {
	e := events.Event{Type: events.TypeExit}
	code := st.ExitStatus()
	if st.Signaled() {
		sig := st.Signal()
		code = 128 + int(sig)
		e.Signal = int(sig)
		e.Message = fmt.Sprintf("killed by signal %d (%s)", int(sig), signalName(sig))
	} else {
		e.Message = fmt.Sprintf("exited with code %d", code)
	}
	e.ExitCode = &code
	g.emit(e)
	powerOff()
}

// exitFailed reports a program that could not be started, with the shell's
// conventions: 127 when not found, 126 when not executable.
func (g *guest) exitFailed(err error) {
	code := 126
	msg := "cannot run program: " + err.Error()
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, errNotFound) {
		code, msg = 127, "command not found: "+err.Error()
	}
	g.logf("%s", msg)
	g.emit(events.Event{Type: events.TypeExit, ExitCode: &code, Message: msg})
	powerOff()
}

var errNotFound = errors.New("not found in PATH")

func (g *guest) startProgram() (int, error) {
	argv := g.cfg.Argv()
	if len(argv) == 0 {
		return 0, fmt.Errorf("%w: no entrypoint or cmd", errNotFound)
	}
	cred, home, err := lookupUser(g.cfg.User)
	if err != nil {
		return 0, err
	}
	env := programEnv(g.cfg.Env, g.cfg.Hostname, home)
	path, err := lookPath(argv[0], envValue(env, "PATH"))
	if err != nil {
		return 0, err
	}
	dir := g.cfg.WorkingDir
	if dir == "" {
		dir = "/"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("working dir: %w", err)
	}
	devnull, err := os.Open("/dev/null")
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	p, err := os.StartProcess(path, argv, &os.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: []*os.File{devnull, g.console, g.console},
		Sys:   &syscall.SysProcAttr{Setsid: true, Credential: cred},
	})
	if err != nil {
		return 0, err
	}
	return p.Pid, nil
}

func programEnv(env []string, hostname, home string) []string {
	out := append([]string{}, env...)
	if envValue(out, "PATH") == "" {
		out = append(out, "PATH="+defaultPath)
	}
	if envValue(out, "HOSTNAME") == "" && hostname != "" {
		out = append(out, "HOSTNAME="+hostname)
	}
	if envValue(out, "HOME") == "" {
		out = append(out, "HOME="+home)
	}
	return out
}

func envValue(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}

func lookPath(name, path string) (string, error) {
	if strings.Contains(name, "/") {
		return name, checkExecutable(name)
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s", errNotFound, name)
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s: permission denied", p)
	}
	return nil
}

func signalName(s syscall.Signal) string {
	name := unix.SignalName(s)
	if name == "" {
		return "signal " + fmt.Sprint(int(s))
	}
	return name
}
