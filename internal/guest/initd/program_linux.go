package initd

import (
	"errors"
	"fmt"
	"github.com/hypeman-vm/hypeman/internal/guest/guestos"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/guest/events"
)

const defaultPath = guestos.DefaultPath

// supervise starts the guest agent and the program, then acts as the
// reaper of every process in the VM until the program ends, then powers
// off. A graceful stop (SIGINT from Ctrl-Alt-Del, or SIGTERM sent by the
// agent's shutdown call) sends SIGTERM to the program and SIGKILL after
// the stop timeout. An agent that dies is started again.
func (g *guest) supervise() {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGINT, unix.SIGTERM)

	g.env = programEnv(g.cfg.Env, g.cfg.Hostname, "/root")
	if dir := g.cfg.WorkingDir; dir != "" {
		_ = os.MkdirAll(dir, 0o755) // the agent starts there, before the program
	}
	agent := g.startAgent()
	g.trace("start program")
	pid, err := g.startProgram()
	if err != nil {
		g.exitFailed(err)
	}
	g.emit(events.Event{Type: events.TypeProgramStart, PID: pid})

	var killTimer, agentRestart <-chan time.Time
	for {
		select {
		case s := <-sigs:
			if s == unix.SIGCHLD {
				for _, c := range reap() {
					switch c.pid {
					case pid:
						g.exited(c.status)
					case agent:
						g.logf("guest agent ended (%v); restarting it", c.status)
						agent = 0
						agentRestart = time.After(200 * time.Millisecond)
					}
				}
				continue
			}
			if killTimer == nil {
				_ = unix.Kill(-pid, unix.SIGTERM)
				killTimer = time.After(time.Duration(g.cfg.StopTimeoutSeconds) * time.Second)
			}
		case <-killTimer:
			_ = unix.Kill(-pid, unix.SIGKILL)
		case <-agentRestart:
			agentRestart = nil
			agent = g.startAgent()
		}
	}
}

type child struct {
	pid    int
	status unix.WaitStatus
}

// reap collects every exited child.
func reap() []child {
	var out []child
	for {
		var st unix.WaitStatus
		got, err := unix.Wait4(-1, &st, unix.WNOHANG, nil)
		if err != nil || got <= 0 {
			return out
		}
		out = append(out, child{pid: got, status: st})
	}
}

// AgentName is argv[0] of the guest agent: cmd/hypeman-guest runs the
// agent when started under this name.
const AgentName = "hypeman-agent"

// startAgent runs the guest agent (this same binary, through
// /proc/self/exe, which stays reachable after the switch of root) in its
// own session, as root, with the program's environment and working
// directory, the console as stdout and stderr, and the events port as fd 3
// (it reports agent_ready there). It returns 0 when the agent is disabled
// or cannot start.
func (g *guest) startAgent() int {
	if g.cfg.SkipGuestAgent {
		return 0
	}
	devnull, err := os.Open("/dev/null")
	if err != nil {
		return 0
	}
	defer devnull.Close()
	dir := g.cfg.WorkingDir
	if dir == "" {
		dir = "/"
	}
	files := []*os.File{devnull, g.console, g.console}
	if g.events != nil {
		files = append(files, g.events)
	}
	p, err := os.StartProcess("/proc/self/exe", []string{AgentName}, &os.ProcAttr{
		Dir: dir, Env: g.env, Files: files, Sys: &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		g.logf("start guest agent: %v", err)
		return 0
	}
	return p.Pid
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
	path, code, err := guestos.LookPath(argv[0], envValue(env, "PATH"), "/")
	if err != nil {
		if code == guestos.CodeNotFound {
			err = fmt.Errorf("%w: %v", errNotFound, err)
		}
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

func envValue(env []string, key string) string { return guestos.EnvValue(env, key) }

func signalName(s syscall.Signal) string {
	name := unix.SignalName(s)
	if name == "" {
		return "signal " + fmt.Sprint(int(s))
	}
	return name
}
