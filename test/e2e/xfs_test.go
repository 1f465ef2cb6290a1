package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Freeze modes under test. The e2e run keeps its daemons' data dirs on an
// XFS file system with reflinks (a loop-mounted sparse file), so that
// forks and snapshots freeze by cloning; HYPEMAN_E2E_FREEZE=move runs them
// on /tmp (ext4 here) with freeze by moving instead.
const (
	envRoot   = "HYPEMAN_E2E_ROOT"   // where daemons make their data dirs
	envFreeze = "HYPEMAN_E2E_FREEZE" // clone (default) or move
)

// freezeEnv prepares the data dir root for the freeze mode asked for and
// returns the inner run's environment and a cleanup.
func freezeEnv() ([]string, func(), error) {
	mode := os.Getenv(envFreeze)
	switch mode {
	case "", "clone":
		root, cleanup, err := reflinkRoot()
		if err != nil {
			return nil, nil, err
		}
		return []string{envRoot + "=" + root, "HYPEMAN_FREEZE_MODE=clone"}, cleanup, nil
	case "move":
		return []string{envRoot + "=/tmp", "HYPEMAN_FREEZE_MODE=move"}, func() {}, nil
	}
	return nil, nil, fmt.Errorf("%s=%q: clone or move", envFreeze, mode)
}

// reflinkRoot makes an XFS file system with reflink=1 on a sparse file,
// mounts it on a new dir under /tmp and returns the dir. The cleanup
// unmounts it and removes the file.
func reflinkRoot() (string, func(), error) {
	dir, err := os.MkdirTemp("/tmp", "hme2e-xfs-")
	if err != nil {
		return "", nil, err
	}
	img := dir + ".img"
	run := func(name string, args ...string) (string, error) {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out)), nil
	}
	fail := func(err error) (string, func(), error) {
		_ = os.Remove(img)
		_ = os.Remove(dir)
		return "", nil, err
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Truncate(img, 100<<30); err != nil { // sparse: only what is written takes space
		return fail(err)
	}
	if _, err := run("mkfs.xfs", "-q", "-m", "reflink=1", img); err != nil {
		return fail(err)
	}
	// Direct I/O: the loop device writes the file without a second page
	// cache, so an fsync in the XFS (of a small state file) does not have
	// to flush every dirty page of the whole image file first.
	dev, err := run("losetup", "--find", "--show", "--direct-io=on", img)
	if err != nil {
		return fail(err)
	}
	// discard gives deleted files' space back to the host's file system.
	if _, err := run("mount", "-o", "discard", dev, dir); err != nil {
		_ = exec.Command("losetup", "-d", dev).Run()
		return fail(err)
	}
	cleanup := func() {
		if exec.Command("umount", dir).Run() != nil {
			_ = exec.Command("umount", "-l", dir).Run()
		}
		_ = exec.Command("losetup", "-d", dev).Run()
		_ = os.Remove(img)
		_ = os.Remove(dir)
	}
	return dir, cleanup, nil
}

// dataRoot is where this run's daemons make their data dirs.
func dataRoot() string {
	if r := os.Getenv(envRoot); r != "" {
		return r
	}
	return "/tmp"
}

// freezeByClone says whether this run's daemons freeze by cloning.
func freezeByClone() bool { return os.Getenv("HYPEMAN_FREEZE_MODE") == "clone" }
