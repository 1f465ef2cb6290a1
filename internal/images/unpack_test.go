package images

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

type entry struct {
	hdr  tar.Header
	data string
}

func tarOf(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		h.Size = int64(len(e.data))
		h.Format = tar.FormatPAX
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestUnpackKeepsMetadata(t *testing.T) {
	root := t.TempDir()
	data := tarOf(t,
		// A file before its directory's own entry, as flattened images have.
		entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/su", Mode: 0o4755, Uid: 0, Gid: 0}, data: "su"},
		entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "usr/", Mode: 0o755}},
		entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "usr/bin/", Mode: 0o750, Uid: 0, Gid: 10}},
		entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}},
		entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "home/u/f", Mode: 0o640, Uid: 1000, Gid: 1001,
			PAXRecords: map[string]string{"SCHILY.xattr.user.note": "hi"}}, data: "file"},
		entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "home/u/hard", Linkname: "home/u/f"}},
		entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin", Linkname: "usr/bin", Uid: 5, Gid: 6}},
		entry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		entry{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o600}},
		// A hard link whose target comes later.
		entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "early", Linkname: "late"}},
		entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "late", Mode: 0o644}, data: "late"},
	)
	if err := unpack(context.Background(), bytes.NewReader(data), root); err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		path     string
		mode     os.FileMode
		uid, gid uint32
	}{
		{"usr/bin/su", 0o755 | os.ModeSetuid, 0, 0},
		{"usr/bin", 0o750 | os.ModeDir, 0, 10},
		{"tmp", 0o777 | os.ModeDir | os.ModeSticky, 0, 0},
		{"home/u/f", 0o640, 1000, 1001},
		{"bin", 0o777 | os.ModeSymlink, 5, 6},
		{"dev/null", 0o666 | os.ModeDevice | os.ModeCharDevice, 0, 0},
		{"run/fifo", 0o600 | os.ModeNamedPipe, 0, 0},
	}
	for _, c := range checks {
		fi, err := os.Lstat(filepath.Join(root, c.path))
		if err != nil {
			t.Errorf("%s: %v", c.path, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != c.mode || st.Uid != c.uid || st.Gid != c.gid {
			t.Errorf("%s: mode %v uid %d gid %d, want %v %d %d", c.path, fi.Mode(), st.Uid, st.Gid, c.mode, c.uid, c.gid)
		}
	}
	if fi, _ := os.Stat(filepath.Join(root, "usr/bin/su")); fi.ModTime().Unix() != 1700000000 {
		t.Errorf("mtime not kept: %v", fi.ModTime())
	}
	if fi, _ := os.Stat(filepath.Join(root, "usr/bin")); fi.ModTime().Unix() != 1700000000 {
		t.Errorf("directory mtime not kept: %v", fi.ModTime())
	}
	same := func(a, b string) bool {
		fa, _ := os.Stat(filepath.Join(root, a))
		fb, _ := os.Stat(filepath.Join(root, b))
		return fa != nil && fb != nil && os.SameFile(fa, fb)
	}
	if !same("home/u/f", "home/u/hard") || !same("late", "early") {
		t.Error("hard links not made")
	}
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(root, "home/u/f"), "user.note", buf); err != nil || string(buf[:n]) != "hi" {
		t.Errorf("xattr = %q, %v", buf[:n], err)
	}
}

func TestUnpackStaysInsideRoot(t *testing.T) {
	outside := t.TempDir()
	cases := []struct {
		name    string
		entries []entry
		want    string // a file that must exist inside root afterwards; "" when unpack must fail
	}{
		{"absolute symlink is resolved inside root", []entry{
			{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}},
			{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "abs", Linkname: "/etc"}},
			{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "abs/x", Mode: 0o644}, data: "x"},
		}, "etc/x"},
		{"dotdot symlink is clamped at root", []entry{
			{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755}},
			{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "up", Linkname: "../../../../../../../d"}},
			{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "up/y", Mode: 0o644}, data: "y"},
		}, "d/y"},
		{"dotdot name is clamped at root", []entry{
			{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "../../z", Mode: 0o644}, data: "z"},
		}, "z"},
		{"symlink to a host directory", []entry{
			{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "host", Linkname: outside}},
			{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "host/evil", Mode: 0o644}, data: "evil"},
		}, ""},
		{"hard link to a host file", []entry{
			{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "passwd", Linkname: "/etc/passwd"}},
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			err := unpack(context.Background(), bytes.NewReader(tarOf(t, tc.entries...)), root)
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Fatalf("unpack wrote outside its root: %v", ents)
			}
			if tc.want == "" {
				if err == nil {
					t.Fatal("unpack succeeded, want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(root, tc.want)); err != nil {
				t.Errorf("%s not inside root: %v", tc.want, err)
			}
		})
	}
}

func TestConvertAppliesWhiteouts(t *testing.T) {
	layer := func(entries ...entry) []byte { return tarOf(t, entries...) }
	lower := layer(
		entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}},
		entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/keep", Mode: 0o644}, data: "old"},
		entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/gone", Mode: 0o644}, data: "gone"},
		entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "opaque/", Mode: 0o755}},
		entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "opaque/old", Mode: 0o644}, data: "old"},
	)
	upper := layer(
		entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/keep", Mode: 0o600}, data: "new"},
		entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/.wh.gone", Mode: 0o644}},
		entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "opaque/.wh..wh..opq", Mode: 0o644}},
		entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "opaque/new", Mode: 0o644}, data: "new"},
	)
	img := empty.Image
	for _, b := range [][]byte{lower, upper} {
		b := b
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "rootfs.erofs")
	if _, err := convert(context.Background(), img, dir, out, "lz4"); err != nil {
		t.Fatal(err)
	}
	x := fsckExtract(t, out)
	if b, _ := os.ReadFile(filepath.Join(x, "etc/keep")); string(b) != "new" {
		t.Errorf("etc/keep = %q, want the upper layer's", b)
	}
	for _, p := range []string{"etc/gone", "opaque/old", "etc/.wh.gone"} {
		if _, err := os.Lstat(filepath.Join(x, p)); !os.IsNotExist(err) {
			t.Errorf("%s should be gone: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(x, "opaque/new")); err != nil {
		t.Error(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("convert left %d entries in its dir, want only rootfs.erofs", len(ents))
	}
}
