package storage

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// xfsDir mounts a small XFS file system with reflinks on a loop file for
// the test, or skips when that is not possible here (not root, no
// mkfs.xfs).
func xfsDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to loop-mount an XFS file system with reflinks")
	}
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		t.Skip("needs mkfs.xfs (xfsprogs) for a file system with reflinks")
	}
	base := t.TempDir()
	img, dir := filepath.Join(base, "xfs.img"), filepath.Join(base, "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 512<<20); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"mkfs.xfs", "-q", "-m", "reflink=1", img}, {"mount", "-o", "loop", img, dir}} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
	return dir
}

func TestCloneSharesThenDiverges(t *testing.T) {
	dir := xfsDir(t)
	if !SupportsClone(dir) {
		t.Fatal("SupportsClone is false on XFS with reflink=1")
	}
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "frozen", "dst")
	want := bytes.Repeat([]byte("guest ram "), 100_000)
	if err := os.WriteFile(src, want, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Clone(src, dst); err != nil {
		t.Fatal(err)
	}
	// The owner keeps writing its file: the clone does not see it.
	f, err := os.OpenFile(src, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("CHANGED"), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("clone changed with its source (err %v)", err)
	}
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o444 {
		t.Fatalf("clone mode: %v %v, want read-only", fi.Mode(), err)
	}
	if _, err := os.Stat(dst + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("temp file left behind: %v", err)
	}
}

func TestCloneWithoutReflinksFailsCleanly(t *testing.T) {
	dir := t.TempDir()
	if SupportsClone(dir) {
		t.Skip("the temp dir's file system has reflinks")
	}
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	if err := os.WriteFile(src, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Clone(src, dst); err == nil {
		t.Fatal("Clone succeeded on a file system without reflinks")
	}
	for _, p := range []string{dst, dst + ".tmp"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s left behind: %v", p, err)
		}
	}
}
