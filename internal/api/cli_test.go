package api_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/hypeman-vm/hypeman/internal/api"
	"github.com/hypeman-vm/hypeman/internal/cli"
)

// hypeman exec and cp against this server, a fake guest behind it.
func TestCLIAgainstTheServer(t *testing.T) {
	s := api.NewFakeGuestServer(t)
	t.Setenv("HYPEMAN_BASE_URL", s.URL())
	t.Setenv("HYPEMAN_API_KEY", s.Token())

	out := captureStdout(t, func() {
		if code := cli.Main([]string{"exec", "vm", "echo", "hi", "there"}); code != 0 {
			t.Errorf("exec: exit %d", code)
		}
		if code := cli.Main([]string{"exec", "vm", "exit", "4"}); code != 4 {
			t.Errorf("exec exit 4: exit %d", code)
		}
		// cat ends because hypeman exec without -i closes stdin.
		if code := cli.Main([]string{"exec", "vm", "cat"}); code != 0 {
			t.Errorf("exec cat: exit %d", code)
		}
		if code := cli.Main([]string{"exec", "stopped", "true"}); code != 1 {
			t.Errorf("exec on a stopped instance: exit %d", code)
		}
	})
	if out != "hi there\n" {
		t.Errorf("exec output %q", out)
	}

	dir := t.TempDir()
	src := filepath.Join(dir, "tree")
	must(t, os.MkdirAll(filepath.Join(src, "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "sub", "f.json"), []byte(`{"x":[1]}`), 0o640))
	must(t, os.Symlink("sub/f.json", filepath.Join(src, "link")))
	if code := cli.Main([]string{"cp", src, "vm:/dst"}); code != 0 {
		t.Fatalf("cp to: exit %d", code)
	}
	if data, mode, ok := s.File("/dst/sub/f.json"); !ok || data != `{"x":[1]}` || mode != 0o640 {
		t.Fatalf("guest file %q %o %v", data, mode, ok)
	}
	back := filepath.Join(dir, "back")
	if code := cli.Main([]string{"cp", "vm:/dst", back}); code != 0 {
		t.Fatalf("cp from: exit %d", code)
	}
	if b, err := os.ReadFile(filepath.Join(back, "link")); err != nil || string(b) != `{"x":[1]}` {
		t.Fatalf("through the copied link: %q %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(back, "sub", "f.json")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("copied file: %v %v", fi, err)
	}
}

func captureStdout(t *testing.T, fn func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	must(t, err)
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() { b, _ := io.ReadAll(r); done <- string(b) }()
	fn()
	os.Stdout = old
	w.Close()
	return <-done
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
