package initd

import (
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/guest/events"
	"github.com/hypeman-vm/hypeman/internal/guest/vmconfig"
)

// ProbeMarker is printed on the console when the kernel command line holds
// hypeman.probe=1: the host boots such a VM to learn whether an accelerator
// really runs guests.
const ProbeMarker = "HYPEMAN-PROBE-OK"

// Main runs PID 1. It never returns.
func Main() {
	g := &guest{console: os.Stderr}
	g.run()
}

type guest struct {
	console *os.File
	events  *os.File
	cfg     vmconfig.Config
	debug   bool
	// env is the program's environment, also the agent's.
	env []string
}

// trace logs a boot step with the guest's uptime when hypeman.debug=1 is on
// the kernel command line.
func (g *guest) trace(step string) {
	if !g.debug {
		return
	}
	b, _ := os.ReadFile("/proc/uptime")
	up, _, _ := strings.Cut(string(b), " ")
	g.logf("[%ss] %s", up, step)
}

func (g *guest) run() {
	if err := mountEarly(); err != nil {
		g.fatal(fmt.Errorf("mount early file systems: %w", err))
	}
	g.openConsole()
	if cmdlineHas("hypeman.probe=1") {
		fmt.Fprintln(g.console, ProbeMarker)
		powerOff()
	}
	// Ctrl-Alt-Del (sent by the host for a graceful stop) becomes SIGINT.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	if err := loadModules("/lib/modules"); err != nil {
		g.fatal(fmt.Errorf("load modules: %w", err))
	}
	g.openEvents()
	steps := []struct {
		name string
		do   func() error
	}{
		{"read config", g.readConfig},
		{"mount root", g.mountRoot},
		{"configure network", g.configureNetwork},
		{"switch root", switchRoot},
	}
	g.debug = cmdlineHas("hypeman.debug=1")
	g.trace("modules loaded")
	for _, s := range steps {
		g.trace(s.name)
		if err := s.do(); err != nil {
			g.fatal(fmt.Errorf("%s: %w", s.name, err))
		}
	}
	g.supervise()
}

func (g *guest) openConsole() {
	f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	setRawOutput(f)
	g.console = f
}

func (g *guest) openEvents() {
	var err error
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var f *os.File
		if f, err = openPort(vmconfig.PortEvents); err == nil {
			g.events = f
			return
		}
	}
	g.logf("events port unavailable: %v", err)
}

func (g *guest) emit(e events.Event) {
	if g.events == nil {
		return
	}
	e.Time = time.Now().UTC()
	_, _ = g.events.Write(events.Marshal(e))
}

func (g *guest) logf(format string, args ...any) {
	fmt.Fprintf(g.console, "hypeman-init: "+format+"\n", args...)
}

// fatal reports a boot failure and powers off; PID 1 never exits.
func (g *guest) fatal(err error) {
	g.logf("%v", err)
	code := 127
	g.emit(events.Event{Type: events.TypeBootFailed, ExitCode: &code, Message: "boot failed: " + err.Error()})
	powerOff()
}

func (g *guest) readConfig() error {
	dev, err := waitForDisk(vmconfig.SerialConfig, 3*time.Second)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(dev)
	if err != nil {
		return err
	}
	g.cfg, err = vmconfig.Decode(data)
	return err
}

func cmdlineHas(word string) bool {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return false
	}
	for _, f := range strings.Fields(string(b)) {
		if f == word {
			return true
		}
	}
	return false
}

// powerOff flushes file systems and powers the VM off. It never returns.
// The console is silenced first so the kernel's "Power down" line does not
// end up in the program's log.
func powerOff() {
	unix.Sync()
	const syslogActionConsoleOff = 6
	_, _ = unix.Klogctl(syslogActionConsoleOff, nil)
	// Console off still lets emergency messages through, and the kernel's
	// "reboot: Power down" is one: it would end up in the app log.
	_ = os.WriteFile("/proc/sys/kernel/printk", []byte("0"), 0o644)
	for {
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		time.Sleep(time.Second)
	}
}

// setRawOutput turns off output post-processing on a tty so the program's
// "\n" reaches the app log as "\n", not "\r\n".
func setRawOutput(f *os.File) {
	t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		return
	}
	t.Oflag &^= unix.OPOST
	_ = unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t)
}
