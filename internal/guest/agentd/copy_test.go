package agentd

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

func ptr(v int) *int { return &v }

// copyTo sends one cp_to call, with data as the file's content for a file.
func copyTo(t *testing.T, sess *yamux.Session, r proto.CopyToRequest, data []byte) (proto.CopyResult, error) {
	t.Helper()
	st := open(t, sess, proto.Request{Method: proto.MethodCopyTo, CopyTo: &r})
	if !r.IsDir && r.Symlink == "" {
		for off := 0; off < len(data); off += chunkSize {
			if err := proto.WriteMsg(st, proto.TypeData, data[off:min(off+chunkSize, len(data))]); err != nil {
				t.Fatal(err)
			}
		}
		if err := proto.WriteMsg(st, proto.TypeEOF, nil); err != nil {
			t.Fatal(err)
		}
	}
	var res proto.CopyResult
	err := proto.ReadJSON(st, proto.TypeResult, &res)
	return res, err
}

func statT(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

func TestCopyToFile(t *testing.T) {
	requireRoot(t)
	sess := dial(t, newTestServer(t))
	dir := t.TempDir()
	data := make([]byte, 5<<20+123)
	rand.Read(data)
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC).Unix()
	p := filepath.Join(dir, "new/parent/file.bin")
	res, err := copyTo(t, sess, proto.CopyToRequest{Path: p, Mode: 0o4750, UID: ptr(1234), GID: ptr(5678), Mtime: mtime}, data)
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesWritten != int64(len(data)) {
		t.Fatalf("bytes written %d", res.BytesWritten)
	}
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("content differs (%d bytes, %v)", len(got), err)
	}
	st := statT(t, p)
	if st.Mode&0o7777 != 0o4750 || st.Uid != 1234 || st.Gid != 5678 || st.Mtim.Sec != mtime {
		t.Fatalf("mode %o uid %d gid %d mtime %d", st.Mode&0o7777, st.Uid, st.Gid, st.Mtim.Sec)
	}
	// Overwrite in place: no temporary file is left behind.
	if _, err := copyTo(t, sess, proto.CopyToRequest{Path: p, Mode: 0o644}, []byte("small")); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if got, _ := os.ReadFile(p); string(got) != "small" || len(ents) != 1 {
		t.Fatalf("content %q, %d entries", got, len(ents))
	}
}

func TestCopyToDirAndSymlink(t *testing.T) {
	requireRoot(t)
	sess := dial(t, newTestServer(t))
	dir := t.TempDir()
	d := filepath.Join(dir, "a/b")
	if _, err := copyTo(t, sess, proto.CopyToRequest{Path: d, IsDir: true, Mode: 0o1770, UID: ptr(7), GID: ptr(8)}, nil); err != nil {
		t.Fatal(err)
	}
	if st := statT(t, d); st.Mode&syscall.S_IFMT != syscall.S_IFDIR || st.Mode&0o7777 != 0o1770 || st.Uid != 7 || st.Gid != 8 {
		t.Fatalf("dir mode %o uid %d gid %d", st.Mode, st.Uid, st.Gid)
	}
	link := filepath.Join(dir, "a/link")
	for _, target := range []string{"b", "../elsewhere"} { // the second replaces the first
		if _, err := copyTo(t, sess, proto.CopyToRequest{Path: link, Symlink: target, UID: ptr(9), GID: ptr(10)}, nil); err != nil {
			t.Fatal(err)
		}
		if got, err := os.Readlink(link); err != nil || got != target {
			t.Fatalf("link -> %q, %v", got, err)
		}
	}
	if st := statT(t, link); st.Uid != 9 || st.Gid != 10 {
		t.Fatalf("link owner %d:%d", st.Uid, st.Gid)
	}
}

func TestCopyToErrors(t *testing.T) {
	sess := dial(t, newTestServer(t))
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The parent is a file: the data is still read, then the error comes.
	_, err := copyTo(t, sess, proto.CopyToRequest{Path: filepath.Join(file, "x"), Mode: 0o644}, make([]byte, 200<<10))
	var re *proto.RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v", err)
	}
	if _, err := copyTo(t, sess, proto.CopyToRequest{Path: file, IsDir: true, Mode: 0o755}, nil); err == nil {
		t.Fatal("mkdir over a file succeeded")
	}
}

// listing is a decoded cp_from reply.
type listing struct {
	entries []proto.Entry
	content map[string][]byte
}

func copyFrom(t *testing.T, sess *yamux.Session, r proto.CopyFromRequest) (listing, error) {
	t.Helper()
	st := open(t, sess, proto.Request{Method: proto.MethodCopyFrom, CopyFrom: &r})
	l := listing{content: map[string][]byte{}}
	var cur string
	for {
		typ, p, err := proto.ReadMsg(st, nil)
		if err != nil {
			t.Fatal(err)
		}
		switch typ {
		case proto.TypeHeader:
			var e proto.Entry
			if err := json.Unmarshal(p, &e); err != nil {
				t.Fatal(err)
			}
			l.entries = append(l.entries, e)
			cur = e.Path
		case proto.TypeData:
			l.content[cur] = append(l.content[cur], p...)
		case proto.TypeEOF:
			cur = ""
		default:
			return l, proto.DecodeFrame(typ, p, proto.TypeResult, nil)
		}
	}
}

func TestCopyFrom(t *testing.T) {
	requireRoot(t)
	sess := dial(t, newTestServer(t))
	root := t.TempDir()
	d := filepath.Join(root, "d")
	must(t, os.MkdirAll(filepath.Join(d, "sub"), 0o750))
	must(t, os.Chmod(d, 0o755|os.ModeSetgid))
	must(t, os.WriteFile(filepath.Join(d, "f"), []byte("hello"), 0o640))
	must(t, os.Chown(filepath.Join(d, "f"), 11, 12))
	big := make([]byte, 100<<10)
	rand.Read(big)
	must(t, os.WriteFile(filepath.Join(d, "sub/g"), big, 0o600))
	must(t, os.Symlink("f", filepath.Join(d, "link")))
	mtime := time.Unix(1600000000, 0)
	must(t, os.Chtimes(filepath.Join(d, "f"), mtime, mtime))

	l, err := copyFrom(t, sess, proto.CopyFromRequest{Path: d})
	if err != nil {
		t.Fatal(err)
	}
	want := []proto.Entry{
		{Path: "d", Mode: 0o2755, IsDir: true},
		{Path: "d/f", Mode: 0o640, Size: 5, UID: 11, GID: 12, Mtime: mtime.Unix()},
		{Path: "d/link", Mode: 0o777, IsSymlink: true, LinkTarget: "f"},
		{Path: "d/sub", Mode: 0o750, IsDir: true},
		{Path: "d/sub/g", Mode: 0o600, Size: int64(len(big))},
	}
	if len(l.entries) != len(want) {
		t.Fatalf("entries %+v", l.entries)
	}
	for i, w := range want {
		g := l.entries[i]
		if w.Mtime == 0 {
			w.Mtime = g.Mtime
		}
		if g != w {
			t.Errorf("entry %d = %+v, want %+v", i, g, w)
		}
	}
	if string(l.content["d/f"]) != "hello" || !bytes.Equal(l.content["d/sub/g"], big) {
		t.Fatalf("content differs")
	}

	// One file alone, through a link that is followed.
	l, err = copyFrom(t, sess, proto.CopyFromRequest{Path: filepath.Join(d, "link"), FollowLinks: true})
	if err != nil || len(l.entries) != 1 || l.entries[0].Path != "link" || string(l.content["link"]) != "hello" {
		t.Fatalf("followed link: %+v %v", l.entries, err)
	}

	_, err = copyFrom(t, sess, proto.CopyFromRequest{Path: filepath.Join(root, "missing")})
	if !errors.Is(err, proto.ErrNotFoundInGuest) {
		t.Fatalf("missing path: %v", err)
	}
	_, err = copyFrom(t, sess, proto.CopyFromRequest{Path: filepath.Join(d, "f/under-a-file")})
	if !errors.Is(err, proto.ErrNotFoundInGuest) {
		t.Fatalf("path under a file: %v", err)
	}
}

func TestStat(t *testing.T) {
	s := newTestServer(t)
	must(t, os.Chmod(s.dir, 0o755))
	sess := dial(t, s)
	root := t.TempDir()
	must(t, os.Chmod(root, 0o700))
	file := filepath.Join(root, "f")
	must(t, os.WriteFile(file, []byte("12345"), 0o640))
	link := filepath.Join(root, "l")
	must(t, os.Symlink("f", link))
	tests := []struct {
		name string
		req  proto.StatRequest
		want proto.PathInfo
	}{
		{"file", proto.StatRequest{Path: file}, proto.PathInfo{Exists: true, IsFile: true, Mode: 0o640, Size: 5}},
		{"dir", proto.StatRequest{Path: root}, proto.PathInfo{Exists: true, IsDir: true, Mode: 0o700}},
		{"symlink", proto.StatRequest{Path: link}, proto.PathInfo{Exists: true, IsSymlink: true, LinkTarget: "f", Mode: 0o777, Size: 1}},
		{"symlink followed", proto.StatRequest{Path: link, FollowLinks: true}, proto.PathInfo{Exists: true, IsFile: true, Mode: 0o640, Size: 5}},
		{"missing", proto.StatRequest{Path: filepath.Join(root, "nope")}, proto.PathInfo{}},
		{"relative to the working dir", proto.StatRequest{Path: "."}, proto.PathInfo{Exists: true, IsDir: true, Mode: 0o755}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got proto.PathInfo
			if err := result(t, sess, proto.Request{Method: proto.MethodStat, Stat: &tc.req}, &got); err != nil {
				t.Fatal(err)
			}
			if tc.want.IsDir {
				tc.want.Size = got.Size
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
