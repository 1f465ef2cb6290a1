package api

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// cpTo sends one "to" request with data frames and returns the frames the
// server answered.
func cpToFrames(t *testing.T, e *agentEnv, req string, data ...string) []frame {
	t.Helper()
	conn := e.dial(t, "/instances/vm/cp")
	send(t, conn, true, req)
	for _, d := range data {
		send(t, conn, false, d)
	}
	send(t, conn, true, `{"type":"end"}`)
	return readAll(t, conn)
}

func TestCpToFile(t *testing.T) {
	e := newAgentEnv(t)
	got := joinFrames(cpToFrames(t, e, `{"direction":"to","guest_path":"/f.json","is_dir":false,"mode":416,"mtime":1700000000,"uid":5,"gid":6}`,
		`{"a":`, `1}`))
	if got != `T{"type":"result","success":true,"bytes_written":7}` {
		t.Fatalf("frames %s", got)
	}
	f := e.guest.get("/f.json")
	if f == nil || string(f.data) != `{"a":1}` || f.mode != 0o640 || f.mtime != 1700000000 || f.uid != 5 || f.gid != 6 {
		t.Fatalf("guest file %+v", f)
	}
}

func TestCpToDirSymlinkAndDefaults(t *testing.T) {
	e := newAgentEnv(t)
	for _, req := range []string{
		`{"direction":"to","guest_path":"/d","is_dir":true}`,
		`{"direction":"to","guest_path":"/d/l","is_symlink":true,"link_target":"../f"}`,
		`{"direction":"to","guest_path":"/d/empty"}`,
	} {
		if got := joinFrames(cpToFrames(t, e, req)); got != `T{"type":"result","success":true,"bytes_written":0}` {
			t.Fatalf("%s: frames %s", req, got)
		}
	}
	if d := e.guest.get("/d"); d == nil || !d.dir || d.mode != 0o755 {
		t.Fatalf("dir %+v", d)
	}
	if l := e.guest.get("/d/l"); l == nil || l.link != "../f" {
		t.Fatalf("symlink %+v", l)
	}
	if f := e.guest.get("/d/empty"); f == nil || f.dir || f.mode != 0o644 || len(f.data) != 0 {
		t.Fatalf("file %+v", f)
	}
}

func TestCpToSrcBasenameIntoExistingDir(t *testing.T) {
	e := newAgentEnv(t)
	e.guest.put("/dir", &fakeFile{dir: true, mode: 0o755})
	cpToFrames(t, e, `{"direction":"to","guest_path":"/dir","src_basename":"x.txt","mode":420}`, "hi")
	cpToFrames(t, e, `{"direction":"to","guest_path":"/new.txt","src_basename":"x.txt","mode":420}`, "ho")
	if f := e.guest.get("/dir/x.txt"); f == nil || string(f.data) != "hi" {
		t.Fatalf("into dir: %+v", f)
	}
	if f := e.guest.get("/new.txt"); f == nil || string(f.data) != "ho" {
		t.Fatalf("new name: %+v", f)
	}
}

func TestCpToFailure(t *testing.T) {
	e := newAgentEnv(t)
	got := joinFrames(cpToFrames(t, e, `{"direction":"to","guest_path":"/ro/f","mode":420}`, "data"))
	if got != `T{"type":"result","success":false,"error":"read-only file system","bytes_written":0}` {
		t.Fatalf("frames %s", got)
	}
}

func TestCpToDisconnectBeforeEndAborts(t *testing.T) {
	e := newAgentEnv(t)
	conn := e.dial(t, "/instances/vm/cp")
	send(t, conn, true, `{"direction":"to","guest_path":"/half","mode":420}`)
	send(t, conn, false, "first half")
	conn.Close()
	e.guest.waitFor(t, "the copy to abort", func() bool { return len(e.guest.aborted) == 1 })
	if e.guest.aborted[0] != "/half" || e.guest.get("/half") != nil {
		t.Fatalf("aborted %v, file %+v", e.guest.aborted, e.guest.get("/half"))
	}
}

func TestCpFromTreeFraming(t *testing.T) {
	e := newAgentEnv(t)
	g := e.guest
	g.put("/d", &fakeFile{dir: true, mode: 0o40755, mtime: 10, uid: 1, gid: 2})
	g.put("/d/a.json", &fakeFile{mode: 0o100644, data: []byte(`{"a":1}`), mtime: 11})
	g.put("/d/b", &fakeFile{mode: 0o600, data: []byte(`[[{}]]tail`), mtime: 12})
	g.put("/d/l", &fakeFile{link: "a.json", mode: 0o777, mtime: 13})
	g.put("/d/z", &fakeFile{mode: 0o644, data: []byte(strings.Repeat("z", 70000))})
	conn := e.dial(t, "/instances/vm/cp")
	send(t, conn, true, `{"direction":"from","guest_path":"/d","follow_links":false}`)
	got := joinFrames(readAll(t, conn))
	z := strings.Repeat("z", 10000)
	want := strings.Join([]string{
		`T{"type":"header","path":"d","mode":493,"is_dir":true,"size":0,"mtime":10,"uid":1,"gid":2}`,
		`T{"type":"header","path":"d/a.json","mode":420,"is_dir":false,"size":7,"mtime":11,"uid":0,"gid":0}`,
		`B"{"`, `B"\"a\":1}"`,
		`T{"type":"end","final":false}`,
		`T{"type":"header","path":"d/b","mode":384,"is_dir":false,"size":10,"mtime":12,"uid":0,"gid":0}`,
		`B"[[{"`, `B"}]]tail"`,
		`T{"type":"end","final":false}`,
		`T{"type":"header","path":"d/l","mode":511,"is_dir":false,"is_symlink":true,"link_target":"a.json","size":0,"mtime":13,"uid":0,"gid":0}`,
		`T{"type":"header","path":"d/z","mode":420,"is_dir":false,"size":70000,"mtime":0,"uid":0,"gid":0}`,
		// The fake guest sends 10000-byte data frames.
		`B"` + z + `"`, `B"` + z + `"`, `B"` + z + `"`, `B"` + z + `"`, `B"` + z + `"`, `B"` + z + `"`, `B"` + z + `"`,
		`T{"type":"end","final":false}`,
		`T{"type":"end","final":true}`,
	}, "|")
	if got != want {
		t.Fatalf("frames\n got %s\nwant %s", got, want)
	}
}

// No BINARY frame may look like a message to cp.ts: starting with '{' or
// '[' and parsing as JSON.
func TestCpDataFramesNeverParseAsJSON(t *testing.T) {
	e := newAgentEnv(t)
	contents := []string{`{}`, `[]`, `{"type":"end","final":true}`, `[1,2,3]`, `{{}}`, `[{"a":[]}]`, `{`, `x{}`}
	for i, c := range contents {
		e.guest.put("/f"+string(rune('a'+i)), &fakeFile{mode: 0o644, data: []byte(c)})
	}
	for i, c := range contents {
		conn := e.dial(t, "/instances/vm/cp")
		send(t, conn, true, `{"direction":"from","guest_path":"/f`+string(rune('a'+i))+`"}`)
		var data string
		for _, f := range readAll(t, conn) {
			if f.text {
				continue
			}
			if (f.data[0] == '{' || f.data[0] == '[') && json.Valid([]byte(f.data)) {
				t.Errorf("content %q: frame %q parses as JSON", c, f.data)
			}
			data += f.data
		}
		if data != c {
			t.Errorf("content %q arrived as %q", c, data)
		}
	}
}

func TestCpFromErrors(t *testing.T) {
	e := newAgentEnv(t)
	cases := []struct{ req, want string }{
		{`{"direction":"from","guest_path":"/nope"}`, `T{"type":"error","message":"no such file: /nope","path":"/nope"}`},
		{`{"direction":"sideways","guest_path":"/"}`, `T{"type":"error","message":"invalid direction: sideways"}`},
		{`{"direction":`, `T{"type":"error","message":"invalid JSON: unexpected end of JSON input"}`},
	}
	for _, c := range cases {
		conn := e.dial(t, "/instances/vm/cp")
		send(t, conn, true, c.req)
		if got := joinFrames(readAll(t, conn)); got != c.want {
			t.Errorf("%s: frames %s", c.req, got)
		}
	}
}

func TestCpStat(t *testing.T) {
	e := newAgentEnv(t)
	e.guest.put("/f", &fakeFile{mode: 0o100644, data: []byte("12345")})
	e.guest.put("/l", &fakeFile{link: "f", mode: 0o777})
	cases := []struct{ req, want string }{
		{`{"direction":"stat","guest_path":"/f"}`,
			`T{"type":"stat","exists":true,"is_dir":false,"is_file":true,"is_symlink":false,"link_target":"","mode":420,"size":5,"error":""}`},
		{`{"direction":"stat","guest_path":"/l"}`,
			`T{"type":"stat","exists":true,"is_dir":false,"is_file":false,"is_symlink":true,"link_target":"f","mode":511,"size":0,"error":""}`},
		{`{"direction":"stat","guest_path":"/l","follow_links":true}`,
			`T{"type":"stat","exists":true,"is_dir":false,"is_file":true,"is_symlink":false,"link_target":"","mode":420,"size":5,"error":""}`},
		{`{"direction":"stat","guest_path":"/nope"}`,
			`T{"type":"stat","exists":false,"is_dir":false,"is_file":false,"is_symlink":false,"link_target":"","mode":0,"size":0,"error":""}`},
	}
	for _, c := range cases {
		conn := e.dial(t, "/instances/vm/cp")
		send(t, conn, true, c.req)
		if got := joinFrames(readAll(t, conn)); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.req, got, c.want)
		}
	}
}

// The SDK's own cp client (lib/cp.js) against this server, when node and
// the conformance suite's node_modules are there.
func TestCpWithTheSDK(t *testing.T) {
	mods, _ := filepath.Abs("../../test/conformance/node_modules")
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node not installed")
	}
	if _, err := os.Stat(filepath.Join(mods, "@onkernel/hypeman/lib/cp.js")); err != nil {
		t.Skip("SDK not installed: npm ci --prefix test/conformance")
	}
	e := newAgentEnv(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	must(t, os.MkdirAll(filepath.Join(src, "sub"), 0o750))
	must(t, os.WriteFile(filepath.Join(src, "a.json"), []byte(`{"a":1}`), 0o600))
	must(t, os.WriteFile(filepath.Join(src, "sub", "b"), []byte(`[1,2]`+strings.Repeat("b", 100000)), 0o644))
	script := `
// node -e: process.argv[1] is the first argument.
const cp = require(process.argv[1]);
const cfg = {baseURL: process.argv[2], apiKey: process.argv[3]};
(async () => {
  await cp.cpToInstance(cfg, {instanceId: 'vm', srcPath: process.argv[4], dstPath: '/up'});
  await cp.cpFromInstance(cfg, {instanceId: 'vm', srcPath: '/up', dstPath: process.argv[5]});
})().catch(e => { console.error(e.message); process.exit(1); });
`
	out := filepath.Join(dir, "out")
	must(t, os.Mkdir(out, 0o755))
	cmd := exec.Command("node", "-e", script, filepath.Join(mods, "@onkernel/hypeman/lib/cp.js"), e.srv.URL, e.token, src, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("node: %v\n%s", err, b)
	}
	if f := e.guest.get("/up/a.json"); f == nil || string(f.data) != `{"a":1}` || f.mode != 0o600 {
		t.Fatalf("guest /up/a.json: %+v", f)
	}
	for name, want := range map[string]string{"up/a.json": `{"a":1}`, "up/sub/b": `[1,2]` + strings.Repeat("b", 100000)} {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil || string(b) != want {
			t.Errorf("%s: %d bytes (%v)", name, len(b), err)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
