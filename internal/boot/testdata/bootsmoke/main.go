// Command bootsmoke is a test PID 1 for the boot package: it loads every
// module named in /lib/modules/load-order, reports on the console and
// powers the VM off.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	console, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		console = os.Stdout
	}
	if err := os.MkdirAll("/proc", 0o755); err == nil {
		unix.Mount("proc", "/proc", "proc", 0, "")
	}
	initAt := uptime()
	loaded, failed := loadModules(console)
	fmt.Fprintf(console, "UPTIME init %s modules-loaded %s\n", initAt, uptime())
	fmt.Fprintf(console, "PROC-MODULES %d\n", countLines("/proc/modules"))
	if failed == 0 {
		fmt.Fprintf(console, "BOOT-OK %d modules\n", loaded)
	} else {
		fmt.Fprintf(console, "BOOT-FAIL %d loaded %d failed\n", loaded, failed)
	}
	console.Sync()
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func loadModules(console *os.File) (loaded, failed int) {
	f, err := os.Open("/lib/modules/load-order")
	if err != nil {
		fmt.Fprintf(console, "MODFAIL load-order: %v\n", err)
		return 0, 1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name := strings.TrimSpace(sc.Text())
		if name == "" {
			continue
		}
		if err := load("/lib/modules/" + name); err != nil {
			fmt.Fprintf(console, "MODFAIL %s: %v\n", name, err)
			failed++
			continue
		}
		loaded++
	}
	return loaded, failed
}

func load(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.FinitModule(fd, "", 0); err != nil && err != unix.EEXIST {
		return err
	}
	return nil
}

// uptime is the guest's uptime in seconds, from /proc/uptime.
func uptime() string {
	data, _ := os.ReadFile("/proc/uptime")
	if f := strings.Fields(string(data)); len(f) > 0 {
		return f[0] + "s"
	}
	return "?"
}

func countLines(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	return strings.Count(string(data), "\n")
}
