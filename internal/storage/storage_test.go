package storage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestCreateOverlayIsSmallAndSharesTemplate(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (make setup installs qemu-utils)")
	}
	dir := t.TempDir()
	s := New(filepath.Join(dir, "templates"))
	ctx := context.Background()
	a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	for _, p := range []string{a, b} {
		if err := s.CreateOverlay(ctx, p, 10<<30); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{a, b} {
		n, err := AllocatedBytes(p)
		if err != nil {
			t.Fatal(err)
		}
		if n > 1<<20 {
			t.Errorf("%s occupies %d bytes; an empty overlay should be a header only", p, n)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "templates"))
	var templates []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".ext4") {
			templates = append(templates, e.Name())
		}
	}
	if len(templates) != 1 || templates[0] != "10737418240.ext4" {
		t.Fatalf("templates = %v, want one 10 GiB template", templates)
	}
	out, err := exec.Command("qemu-img", "info", "--output=json", a).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"virtual-size": 10737418240`) {
		t.Fatalf("overlay virtual size wrong: %s", out)
	}
}
