// Package guestos holds the small OS helpers both guest programs (initd,
// the PID 1, and agentd, the agent) need: finding a virtio-serial port by
// name, resolving a command the way a shell does, reading an environment.
// It runs only inside the VM.
package guestos

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Exit codes of a command that could not run, as shells use them.
const (
	CodeNotExecutable = 126
	CodeNotFound      = 127
)

// DefaultPath is the PATH of programs whose environment sets none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// OpenPort opens the virtio-serial port with the given name. With
// nonblock, its reads and writes go through Go's poller, so Close and
// deadlines interrupt them. A port can be open only once at a time.
func OpenPort(name string, nonblock bool) (*os.File, error) {
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
		flags := unix.O_RDWR | unix.O_CLOEXEC | unix.O_NOCTTY
		if nonblock {
			flags |= unix.O_NONBLOCK
		}
		fd, err := unix.Open(dev, flags, 0)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: dev, Err: err}
		}
		return os.NewFile(uintptr(fd), dev), nil
	}
	return nil, fmt.Errorf("no virtio-serial port named %q", name)
}

// EnvValue returns the last value of key in env (KEY=VALUE entries).
func EnvValue(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}

// LookPath resolves name the way a shell does: in path (DefaultPath when
// empty) unless it holds a slash, when it is taken as is, relative to dir.
// On failure it returns the shell's exit code: CodeNotFound or
// CodeNotExecutable.
func LookPath(name, path, dir string) (string, int, error) {
	if strings.Contains(name, "/") {
		if !filepath.IsAbs(name) {
			name = filepath.Join(dir, name)
		}
		if err := CheckExecutable(name); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return "", CodeNotFound, err
			}
			return "", CodeNotExecutable, err
		}
		return name, 0, nil
	}
	if path == "" {
		path = DefaultPath
	}
	var denied error
	for _, d := range filepath.SplitList(path) {
		p := filepath.Join(d, name)
		err := CheckExecutable(p)
		if err == nil {
			return p, 0, nil
		}
		if denied == nil && !errors.Is(err, fs.ErrNotExist) {
			denied = err
		}
	}
	if denied != nil {
		return "", CodeNotExecutable, denied
	}
	return "", CodeNotFound, fmt.Errorf("%s: command not found", name)
}

// CheckExecutable reports why p cannot be executed, if it cannot.
func CheckExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s: permission denied", p)
	}
	return nil
}
