package initd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/guest/vmconfig"
)

const (
	lowerDir = "/mnt/lower"
	upperDir = "/mnt/upper"
	newRoot  = "/newroot"
)

func mountEarly() error {
	mounts := []struct{ src, dst, fstype, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
	}
	for _, m := range mounts {
		if err := mount(m.src, m.dst, m.fstype, 0, m.data); err != nil {
			return err
		}
	}
	return nil
}

func mount(src, dst, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(src, dst, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s (%s): %w", src, dst, fstype, err)
	}
	return nil
}

// waitForDisk returns the /dev path of the virtio disk with the given serial.
func waitForDisk(serial string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		if dev, ok := findDisk(serial); ok {
			return dev, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no disk with serial %q", serial)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func findDisk(serial string) (string, bool) {
	ents, _ := os.ReadDir("/sys/block")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "serial"))
		if err == nil && strings.TrimSpace(string(b)) == serial {
			return "/dev/" + e.Name(), true
		}
	}
	return "", false
}

// mountRoot builds the program's root: the image read-only, under an
// overlayfs whose upper layer lives on the writable overlay disk.
func (g *guest) mountRoot() error {
	rootDev, err := waitForDisk(vmconfig.SerialRootfs, 3*time.Second)
	if err != nil {
		return err
	}
	overlayDev, err := waitForDisk(vmconfig.SerialOverlay, 3*time.Second)
	if err != nil {
		return err
	}
	if err := mount(rootDev, lowerDir, "erofs", unix.MS_RDONLY, ""); err != nil {
		return err
	}
	// noinit_itable: never zero inode tables in the background; the overlay
	// disk is sparse and copy-on-write, and zeroing would allocate it all.
	if err := mount(overlayDev, upperDir, "ext4", unix.MS_NOATIME, "noinit_itable"); err != nil {
		return err
	}
	for _, d := range []string{upperDir + "/upper", upperDir + "/work"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lowerDir, upperDir, upperDir)
	if err := mount("overlay", newRoot, "overlay", 0, opts); err != nil {
		return err
	}
	return g.populateRoot()
}

// populateRoot moves the early mounts into the new root and adds the
// pseudo file systems programs expect.
func (g *guest) populateRoot() error {
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		if err := os.MkdirAll(newRoot+d, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(d, newRoot+d, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s: %w", d, err)
		}
	}
	extra := []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		// Not nodev: the pseudo-terminals are device nodes on it.
		{"devpts", newRoot + "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
		{"tmpfs", newRoot + "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", newRoot + "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	}
	for _, m := range extra {
		if err := mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil {
			return err
		}
	}
	links := map[string]string{"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2", "/dev/ptmx": "pts/ptmx"}
	for name, target := range links {
		_ = os.Remove(newRoot + name)
		if err := os.Symlink(target, newRoot+name); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	if _, err := os.Stat(newRoot + "/tmp"); errors.Is(err, os.ErrNotExist) {
		_ = os.Mkdir(newRoot+"/tmp", 0o1777)
	}
	return nil
}

// switchRoot makes the new root "/", the way switch_root does: free the
// initramfs's large files, move the new root over "/", chroot into it.
func switchRoot() error {
	_ = os.RemoveAll("/lib/modules")
	if err := os.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return os.Chdir("/")
}
