package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestParseCpArg(t *testing.T) {
	cases := []struct {
		arg, inst, path string
		remote          bool
	}{
		{"vm:/etc/hosts", "vm", "/etc/hosts", true},
		{"vm:rel", "vm", "rel", true},
		{"/tmp/a:b", "", "/tmp/a:b", false},
		{"./a:b", "", "./a:b", false},
		{"local", "", "local", false},
		{":x", "", ":x", false},
	}
	for _, c := range cases {
		inst, p, remote := parseCpArg(c.arg)
		if inst != c.inst || p != c.path || remote != c.remote {
			t.Errorf("%q: %q %q %v", c.arg, inst, p, remote)
		}
	}
}

// The extractor refuses what cp.ts refuses.
func TestExtractorSanitizesPaths(t *testing.T) {
	dst := t.TempDir()
	cases := []struct {
		name string
		m    cpMessage
		ok   bool
	}{
		{"plain", cpMessage{Path: "d/f", Mode: 0o644}, true},
		{"absolute", cpMessage{Path: "/etc/passwd", Mode: 0o644}, false},
		{"dotdot", cpMessage{Path: "../x", Mode: 0o644}, false},
		{"dotdot inside", cpMessage{Path: "d/../../x", Mode: 0o644}, false},
		{"harmless dotdot", cpMessage{Path: "d/a/../b", Mode: 0o644}, true},
		{"symlink inside", cpMessage{Path: "d/l1", IsSymlink: true, LinkTarget: "f"}, true},
		{"symlink to the root", cpMessage{Path: "d/sub/l2", IsSymlink: true, LinkTarget: "../.."}, true},
		{"symlink absolute", cpMessage{Path: "d/l3", IsSymlink: true, LinkTarget: "/etc"}, false},
		{"symlink escaping", cpMessage{Path: "d/l4", IsSymlink: true, LinkTarget: "../../x"}, false},
		{"symlink without target", cpMessage{Path: "d/l5", IsSymlink: true}, false},
	}
	for _, c := range cases {
		x := &extractor{base: dst, root: filepath.Join(dst, "d")}
		err := x.header(c.m)
		x.abort()
		if (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// Nothing was written outside dst.
	if _, err := os.Lstat(filepath.Join(filepath.Dir(dst), "x")); err == nil {
		t.Fatal("wrote outside the destination")
	}
}

// A file in the way of an entry that is a symlink is replaced, never
// written through.
func TestExtractorDoesNotWriteThroughLinks(t *testing.T) {
	dst := t.TempDir()
	outside := filepath.Join(t.TempDir(), "victim")
	must(t, os.WriteFile(outside, []byte("keep"), 0o644))
	must(t, os.Symlink(outside, filepath.Join(dst, "f")))
	x := &extractor{base: dst, root: dst}
	must(t, x.header(cpMessage{Path: "d/f", Mode: 0o644}))
	must(t, x.data([]byte("new")))
	must(t, x.finish())
	if b, _ := os.ReadFile(outside); string(b) != "keep" {
		t.Fatalf("wrote through the link: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "f")); string(b) != "new" {
		t.Fatalf("file %q", b)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// fakeCp is a cp endpoint over an in-memory guest tree, framed as the
// real server frames it.
type fakeCp struct {
	mu    sync.Mutex // guards files and order
	files map[string]*guestEntry
	order []string // paths in the order "to" requests arrived
}

type guestEntry struct {
	req  cpRequest
	data []byte
}

func newFakeCp(t *testing.T) (*fakeCp, *cpClient) {
	f := &fakeCp{files: map[string]*guestEntry{"/": {req: cpRequest{IsDir: true}}}}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	u := "ws" + strings.TrimPrefix(srv.URL, "http")
	dial := func(ctx context.Context) (*websocket.Conn, error) {
		conn, _, err := websocket.DefaultDialer.DialContext(ctx, u, nil)
		return conn, err
	}
	return f, &cpClient{dial: dial, warn: os.Stderr}
}

func (f *fakeCp) serve(w http.ResponseWriter, r *http.Request) {
	conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer conn.Close()
	var req cpRequest
	if err := conn.ReadJSON(&req); err != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch req.Direction {
	case "stat":
		e := f.files[req.GuestPath]
		_ = conn.WriteJSON(map[string]any{"type": "stat", "exists": e != nil, "is_dir": e != nil && e.req.IsDir})
	case "to":
		e := &guestEntry{req: req}
		for {
			typ, b, err := conn.ReadMessage()
			if err != nil {
				return
			}
			if typ == websocket.TextMessage {
				break
			}
			e.data = append(e.data, b...)
		}
		f.files[req.GuestPath], f.order = e, append(f.order, req.GuestPath)
		_ = conn.WriteJSON(map[string]any{"type": "result", "success": true, "bytes_written": len(e.data)})
	case "from":
		f.sendTree(conn, req.GuestPath)
	}
}

func (f *fakeCp) sendTree(conn *websocket.Conn, root string) {
	var names []string
	for p := range f.files {
		if p == root || strings.HasPrefix(p, root+"/") {
			names = append(names, p)
		}
	}
	sort.Strings(names)
	for _, p := range names {
		e := f.files[p]
		mode := uint32(0o777)
		if e.req.Mode != nil {
			mode = *e.req.Mode
		}
		h := map[string]any{"type": "header", "path": strings.TrimPrefix(strings.TrimPrefix(p, path.Dir(root)), "/"),
			"mode": mode, "is_dir": e.req.IsDir, "size": len(e.data), "mtime": e.req.Mtime, "uid": 0, "gid": 0}
		if e.req.IsSymlink {
			h["is_symlink"], h["link_target"] = true, e.req.LinkTarget
		}
		_ = conn.WriteJSON(h)
		if e.req.IsDir || e.req.IsSymlink {
			continue
		}
		for off := 0; off < len(e.data); off += 1000 {
			_ = conn.WriteMessage(websocket.BinaryMessage, e.data[off:min(off+1000, len(e.data))])
		}
		_ = conn.WriteJSON(map[string]any{"type": "end", "final": false})
	}
	_ = conn.WriteJSON(map[string]any{"type": "end", "final": true})
}

// makeTree writes a small tree with a symlink, odd modes and old mtimes.
func makeTree(t *testing.T, root string) {
	must(t, os.MkdirAll(filepath.Join(root, "sub", "deep"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "a.json"), []byte(`{"a":1}`), 0o600))
	must(t, os.WriteFile(filepath.Join(root, "sub", "big"), bytes.Repeat([]byte("0123456789"), 10000), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "sub", "deep", "empty"), nil, 0o640))
	must(t, os.Symlink("../a.json", filepath.Join(root, "sub", "link")))
	must(t, os.Chmod(filepath.Join(root, "sub"), 0o750))
	old := time.Unix(1600000000, 0)
	for _, p := range []string{"a.json", "sub/big", "sub/deep/empty", "sub/deep", "sub", "."} {
		must(t, os.Chtimes(filepath.Join(root, p), old, old))
	}
}

func TestCpUploadAndDownload(t *testing.T) {
	guest, c := newFakeCp(t)
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "tree")
	makeTree(t, src)

	// Upload to a new name: the tree becomes /up.
	must(t, c.upload(ctx, src, "/up", false))
	if g := guest.files["/up/a.json"]; g == nil || string(g.data) != `{"a":1}` || *g.req.Mode != 0o600 ||
		g.req.Mtime != 1600000000 || g.req.UID == nil || *g.req.UID != os.Getuid() {
		t.Fatalf("guest a.json %+v", g)
	}
	if g := guest.files["/up/sub/link"]; g == nil || !g.req.IsSymlink || g.req.LinkTarget != "../a.json" {
		t.Fatalf("guest link %+v", g)
	}
	if g := guest.files["/up/sub"]; g == nil || !g.req.IsDir || *g.req.Mode != 0o750 || g.req.Mtime != 1600000000 {
		t.Fatalf("guest sub %+v", g)
	}
	// Every directory arrives before its entries.
	seen := map[string]bool{}
	for _, p := range guest.order {
		if p != "/up" && !seen[path.Dir(p)] {
			t.Fatalf("%s before its directory (order %v)", p, guest.order)
		}
		seen[p] = true
	}
	// Upload into an existing directory: /up/tree.
	must(t, c.upload(ctx, src, "/up", false))
	if guest.files["/up/tree/sub/big"] == nil {
		t.Fatal("second upload did not go into /up")
	}

	// Download into an existing directory: dst/up.
	dst := t.TempDir()
	must(t, c.download(ctx, "/up", dst, false))
	compareTrees(t, src, filepath.Join(dst, "up"))
	// Download to a new name.
	must(t, c.download(ctx, "/up/sub/deep", filepath.Join(dst, "renamed"), false))
	compareTrees(t, filepath.Join(src, "sub", "deep"), filepath.Join(dst, "renamed"))
	// sub/link points at ../a.json: outside a copy of sub alone.
	err := c.download(ctx, "/up/sub", filepath.Join(dst, "sub-only"), false)
	if err == nil || !strings.Contains(err.Error(), "escapes destination") {
		t.Fatalf("escaping link: %v", err)
	}
	// A single file to a new name, and over an existing file.
	must(t, c.download(ctx, "/up/a.json", filepath.Join(dst, "one.json"), false))
	must(t, c.download(ctx, "/up/a.json", filepath.Join(dst, "one.json"), false))
	if b, err := os.ReadFile(filepath.Join(dst, "one.json")); err != nil || string(b) != `{"a":1}` {
		t.Fatalf("one.json %q %v", b, err)
	}
	// A directory over a file is refused.
	if err := c.download(ctx, "/up/sub", filepath.Join(dst, "one.json"), false); err == nil {
		t.Fatal("directory copied over a file")
	}
}

// compareTrees checks content, modes, mtimes and symlinks.
func compareTrees(t *testing.T, want, got string) {
	t.Helper()
	err := filepath.Walk(want, func(p string, wi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		gi, err := os.Lstat(filepath.Join(got, rel))
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		if gi.Mode() != wi.Mode() {
			t.Errorf("%s: mode %v, want %v", rel, gi.Mode(), wi.Mode())
		}
		if wi.Mode()&os.ModeSymlink != 0 {
			wl, _ := os.Readlink(p)
			gl, _ := os.Readlink(filepath.Join(got, rel))
			if wl != gl {
				t.Errorf("%s: link %q, want %q", rel, gl, wl)
			}
			return nil
		}
		if !gi.ModTime().Equal(wi.ModTime()) {
			t.Errorf("%s: mtime %v, want %v", rel, gi.ModTime(), wi.ModTime())
		}
		if os.Geteuid() == 0 {
			if gi.Sys().(*syscall.Stat_t).Uid != wi.Sys().(*syscall.Stat_t).Uid {
				t.Errorf("%s: owner differs", rel)
			}
		}
		if wi.Mode().IsRegular() {
			wb, _ := os.ReadFile(p)
			gb, _ := os.ReadFile(filepath.Join(got, rel))
			if !bytes.Equal(wb, gb) {
				t.Errorf("%s: content differs", rel)
			}
		}
		return nil
	})
	must(t, err)
}

// A tree whose headers try to leave the destination fails the copy.
func TestCpDownloadRefusesEscapes(t *testing.T) {
	guest, c := newFakeCp(t)
	mode := uint32(0o644)
	guest.files["/evil"] = &guestEntry{req: cpRequest{IsDir: true, Mode: &mode}}
	guest.files["/evil/l"] = &guestEntry{req: cpRequest{IsSymlink: true, LinkTarget: "/etc", Mode: &mode}}
	dst := t.TempDir()
	err := c.download(context.Background(), "/evil", dst, false)
	if err == nil || !strings.Contains(err.Error(), "absolute path") {
		t.Fatalf("err %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dst, "evil", "l")); err == nil {
		t.Fatal("the link was made")
	}
}

func TestCpMessagesDecode(t *testing.T) {
	var m cpMessage
	must(t, json.Unmarshal([]byte(`{"type":"header","path":"d/l","mode":511,"is_dir":false,"is_symlink":true,"link_target":"a","size":0,"mtime":5,"uid":1,"gid":2}`), &m))
	if m.Type != "header" || !m.IsSymlink || m.LinkTarget != "a" || m.UID != 1 || m.GID != 2 || m.Mtime != 5 {
		t.Fatalf("%+v", m)
	}
}

// A copy of the guest's "/" is named "." and its entries carry no prefix.
func TestExtractorGuestRoot(t *testing.T) {
	dst := t.TempDir()
	x := &extractor{base: dst, root: dst}
	must(t, x.header(cpMessage{Path: ".", IsDir: true, Mode: 0o755}))
	must(t, x.header(cpMessage{Path: "etc", IsDir: true, Mode: 0o755}))
	must(t, x.header(cpMessage{Path: "etc/hosts", Mode: 0o644}))
	must(t, x.data([]byte("127.0.0.1 localhost\n")))
	must(t, x.finish())
	if b, err := os.ReadFile(filepath.Join(dst, "etc", "hosts")); err != nil || string(b) != "127.0.0.1 localhost\n" {
		t.Fatalf("%q %v", b, err)
	}
	// Entries of another tree than the first entry's are refused.
	x = &extractor{base: dst, root: filepath.Join(dst, "a")}
	must(t, x.header(cpMessage{Path: "a", IsDir: true, Mode: 0o755}))
	if err := x.header(cpMessage{Path: "b/f", Mode: 0o644}); err == nil {
		t.Fatal("entry outside the copied tree accepted")
	}
}
