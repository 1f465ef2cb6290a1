package boot

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// cpioList runs the system cpio to list archive (name -> mode string).
func cpioList(t *testing.T, archive string) (order []string, modes map[string]string) {
	t.Helper()
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("needs the cpio tool")
	}
	cmd := exec.Command("cpio", "-itv", "--quiet", "-F", archive)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -itv: %v\n%s", err, out)
	}
	modes = map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		name := f[len(f)-1]
		order = append(order, name)
		modes[name] = f[0]
	}
	return order, modes
}

func TestNewcRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := newNewcWriter(&buf)
	c.Dir("dev", 0o755)
	c.CharDev("dev/console", 0o600, 5, 1)
	c.File("init", 0o755, []byte("#!x"))                  // 3 bytes: needs data padding
	c.File("a/longer-name.txt", 0o640, []byte("hello\n")) // odd name length
	c.File("empty", 0o644, nil)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d not 4-aligned", buf.Len())
	}
	archive := filepath.Join(t.TempDir(), "a.cpio")
	os.WriteFile(archive, buf.Bytes(), 0o644)
	order, modes := cpioList(t, archive)
	wantOrder := []string{"dev", "dev/console", "init", "a/longer-name.txt", "empty"}
	if !slices.Equal(order, wantOrder) {
		t.Fatalf("entries = %v", order)
	}
	for name, mode := range map[string]string{
		"dev": "drwxr-xr-x", "dev/console": "crw-------", "init": "-rwxr-xr-x",
		"a/longer-name.txt": "-rw-r-----", "empty": "-rw-r--r--",
	} {
		if modes[name] != mode {
			t.Errorf("%s mode %s, want %s", name, modes[name], mode)
		}
	}
	// Contents survive extraction.
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-id", "--quiet", "-F", archive, "init", "a/longer-name.txt")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "a/longer-name.txt")); string(got) != "hello\n" {
		t.Errorf("extracted %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "init")); string(got) != "#!x" {
		t.Errorf("extracted init %q", got)
	}
}

func TestBuildInitrdContents(t *testing.T) {
	k := testKernel(t)
	p := tempPaths(t)
	guest := []byte("\x7fELF fake init")
	path, err := BuildInitrd(t.Context(), p, k, guest)
	if err != nil {
		t.Fatal(err)
	}
	order, modes := cpioList(t, path)
	mods, _ := ResolveModules(k.ModulesDir, GuestModules())
	want := map[string]string{
		"dev": "drwxr-xr-x", "dev/console": "crw-------", "dev/null": "crw-rw-rw-",
		"init": "-rwxr-xr-x", "lib/modules/load-order": "-rw-r--r--",
	}
	var loadOrder strings.Builder
	for _, m := range mods {
		base := filepath.Base(m.File)
		want["lib/modules/"+base] = "-rw-r--r--"
		loadOrder.WriteString(base + "\n")
	}
	for name, mode := range want {
		if modes[name] != mode {
			t.Errorf("%s: mode %q, want %q", name, modes[name], mode)
		}
	}
	if slices.Index(order, "dev/console") > slices.Index(order, "init") {
		t.Errorf("dev/console after init: %v", order)
	}
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-id", "--quiet", "-F", path, "init", "lib/modules/load-order")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "init")); !bytes.Equal(got, guest) {
		t.Errorf("init content differs")
	}
	got, _ := os.ReadFile(filepath.Join(dir, "lib/modules/load-order"))
	if string(got) != loadOrder.String() {
		t.Errorf("load-order =\n%s\nwant\n%s", got, loadOrder.String())
	}
	t.Logf("load-order:\n%s", got)
}

func TestBuildInitrdCache(t *testing.T) {
	k := testKernel(t)
	p := tempPaths(t)
	first, err := BuildInitrd(t.Context(), p, k, []byte("init v1"))
	if err != nil {
		t.Fatal(err)
	}
	st1, _ := os.Stat(first)
	again, err := BuildInitrd(t.Context(), p, k, []byte("init v1"))
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(again)
	if again != first || !os.SameFile(st1, st2) {
		t.Fatalf("same inputs rebuilt: %s -> %s (same file %v)", first, again, os.SameFile(st1, st2))
	}
	second, err := BuildInitrd(t.Context(), p, k, []byte("init v2"))
	if err != nil {
		t.Fatal(err)
	}
	if second == first {
		t.Fatalf("changed guest binary kept path %s", first)
	}
	other := k
	other.Version = k.Version + "-other"
	if third, _ := BuildInitrd(t.Context(), p, other, []byte("init v2")); third == second {
		t.Fatalf("changed kernel version kept path %s", second)
	}
}

func TestBuildInitrdPrunes(t *testing.T) {
	k := testKernel(t)
	p := tempPaths(t)
	var built []string
	for i := range keepInitrds {
		path, err := BuildInitrd(t.Context(), p, k, fmt.Appendf(nil, "init %d", i))
		if err != nil {
			t.Fatal(err)
		}
		built = append(built, path)
		// Distinct mtimes even on coarse-grained file systems.
		old := time.Now().Add(time.Duration(i-10) * time.Minute)
		os.Chtimes(path, old, old)
	}
	st0, _ := os.Stat(built[0])
	// Reusing the oldest makes it recent again, without rewriting it.
	if again, err := BuildInitrd(t.Context(), p, k, []byte("init 0")); err != nil || again != built[0] {
		t.Fatalf("reuse: %s, %v", again, err)
	}
	newest, err := BuildInitrd(t.Context(), p, k, []byte("init new"))
	if err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(p.InitrdDir(), "*.cpio"))
	slices.Sort(left)
	want := []string{built[0], built[2], newest}
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Fatalf("left %v\nwant %v", left, want)
	}
	if st, _ := os.Stat(built[0]); !os.SameFile(st, st0) {
		t.Errorf("reused archive was rewritten")
	}
}
