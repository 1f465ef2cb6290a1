package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func needQemuImg(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make setup installs qemu-utils)", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Our overlay is byte for byte what qemu-img writes, apart from the
// optional feature-name table; qemu-img check finds no error in it.
func TestQCOW2OverlayMatchesQemuImg(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	for _, size := range []int64{1 << 20, 1 << 30, 20 << 30, 3 << 40} {
		base := filepath.Join(dir, "base.raw")
		if err := os.Truncate(base, 0); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		f, err := os.Create(base)
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(size)
		f.Close()
		ours, theirs := filepath.Join(dir, "ours.qcow2"), filepath.Join(dir, "theirs.qcow2")
		if err := writeQCOW2Overlay(ours, base, "raw", uint64(size)); err != nil {
			t.Fatal(err)
		}
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, theirs)
		run(t, "qemu-img", "check", ours)
		a, _ := os.ReadFile(ours)
		b, _ := os.ReadFile(theirs)
		if len(a) != len(b) {
			t.Fatalf("size %d: %d bytes, qemu-img wrote %d", size, len(a), len(b))
		}
		// qemu-img's header extensions go on with a feature-name table, so
		// its backing name starts later: compare that name where each
		// header says it is, the other header fields, then every cluster
		// after the first.
		ao, bo := binary.BigEndian.Uint64(a[8:]), binary.BigEndian.Uint64(b[8:])
		if n := uint64(len(base)); string(a[ao:ao+n]) != base || string(b[bo:bo+n]) != base {
			t.Fatalf("backing names %q, %q", a[ao:ao+n], b[bo:bo+n])
		}
		clear(a[8:16])
		clear(b[8:16])
		if !bytes.Equal(a[:104], b[:104]) {
			t.Fatalf("size %d: header differs:\n%x\n%x", size, a[:104], b[:104])
		}
		if !bytes.Equal(a[qcow2ClusterSize:], b[qcow2ClusterSize:]) {
			t.Fatalf("size %d: tables differ from qemu-img's", size)
		}
		var info struct {
			VirtualSize   int64  `json:"virtual-size"`
			BackingFile   string `json:"backing-filename"`
			BackingFormat string `json:"backing-filename-format"`
		}
		if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "--output=json", ours)), &info); err != nil {
			t.Fatal(err)
		}
		if info.VirtualSize != size || info.BackingFile != base || info.BackingFormat != "raw" {
			t.Fatalf("size %d: qemu-img info %+v", size, info)
		}
	}
}

// Reads fall through to the backing file, writes land in the overlay,
// and a qcow2 layer can back another overlay (a fork of a fork).
func TestQCOW2OverlayReadsAndWrites(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, bytes.Repeat([]byte{0xab}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	layer := filepath.Join(dir, "layer.qcow2")
	if err := writeQCOW2Overlay(layer, base, "raw", 1<<20); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 65536 4096", layer)
	s := New(filepath.Join(dir, "templates"))
	top := filepath.Join(dir, "top.qcow2")
	if err := s.CreateOverlayOn(t.Context(), top, layer); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xef 0 4096", top)
	for _, c := range []string{"read -P 0xef 0 4096", "read -P 0xcd 65536 4096", "read -P 0xab 131072 4096"} {
		out := run(t, "qemu-io", "-f", "qcow2", "-c", c, top)
		if strings.Contains(out, "Pattern verification failed") {
			t.Fatalf("%s: %s", c, out)
		}
	}
	run(t, "qemu-img", "check", top)
	if out := run(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 4096", layer); strings.Contains(out, "failed") {
		t.Fatalf("the layer saw the top's write: %s", out)
	}
	if _, err := qcow2Size(base); err == nil {
		t.Fatal("a raw file was taken for a qcow2 image")
	}
}
