package images

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/testimage"
)

func TestPullBusyboxBecomesReady(t *testing.T) {
	reg := newTestRegistry(t)
	ref := reg.push(t, "demo/busybox:v1", busyboxImage(t))
	m := newManager(t, t.TempDir(), Config{})

	start := time.Now()
	img, err := m.Create(context.Background(), CreateRequest{Name: ref, Tags: map[string]string{"team": "a"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(img.Digest, "sha256:") || img.Name != ref {
		t.Fatalf("created %+v", img)
	}
	ready := waitReady(t, m, ref, time.Minute)
	t.Logf("busybox pull+convert: %v", time.Since(start))

	if ready.SizeBytes == nil || *ready.SizeBytes == 0 || ready.QueuePosition != nil || ready.Error != nil {
		t.Fatalf("ready image %+v", ready)
	}
	if got := strings.Join(ready.Cmd, " "); got != strings.Join(testimage.BusyboxCmd, " ") {
		t.Errorf("cmd = %q", got)
	}
	if ready.Env["PATH"] == "" || ready.Platform != "linux/amd64" || ready.WorkingDir != "/" {
		t.Errorf("config not recorded: %+v", ready)
	}
	rootfs := m.RootfsPath(ready.Digest)
	if fi, err := os.Stat(rootfs); err != nil || fi.Size() != *ready.SizeBytes {
		t.Fatalf("rootfs %s: %v", rootfs, err)
	}
	if out := dumpErofs(t, rootfs, "/bin/busybox"); !strings.Contains(out, "regular file") || !strings.Contains(out, "Access: 0755") {
		t.Errorf("/bin/busybox in erofs:\n%s", out)
	}
	if out := dumpErofs(t, rootfs, "/bin/sh"); !strings.Contains(out, "symlink") {
		t.Errorf("/bin/sh in erofs:\n%s", out)
	}
	// dump.erofs prints only the permission bits; fsck.erofs checks the
	// whole image and extracts it, keeping the sticky bit.
	x := fsckExtract(t, rootfs)
	if fi, err := os.Stat(x + "/tmp"); err != nil || fi.Mode()&os.ModeSticky == 0 {
		t.Errorf("/tmp lost its sticky bit: %v %v", fi.Mode(), err)
	}
	if b, err := os.ReadFile(x + "/www/index.html"); err != nil || string(b) != testimage.BusyboxIndexHTML {
		t.Errorf("/www/index.html = %q, %v", b, err)
	}
	ents, _ := os.ReadDir(m.paths.ImageDir(strings.TrimPrefix(ready.Digest, "sha256:")))
	if len(ents) != 2 {
		t.Errorf("image dir holds %d entries, want metadata.json and rootfs.erofs (temp files left?)", len(ents))
	}
	if got, err := m.Get(context.Background(), ref); err != nil || got.Status != StatusReady {
		t.Errorf("Get(tag) = %+v, %v", got, err)
	}
	if list, _ := m.List(context.Background(), map[string]string{"team": "a"}); len(list) != 1 {
		t.Errorf("List(team=a) = %d images", len(list))
	}
	if list, _ := m.List(context.Background(), map[string]string{"team": "b"}); len(list) != 0 {
		t.Errorf("List(team=b) = %d images", len(list))
	}
}

func TestCreateIsIdempotent(t *testing.T) {
	reg := newTestRegistry(t)
	ref := reg.push(t, "idem:latest", busyboxImage(t))
	m := newManager(t, t.TempDir(), Config{})
	ctx := context.Background()

	a, err := m.Create(ctx, CreateRequest{Name: ref})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Create(ctx, CreateRequest{Name: ref})
	if err != nil || b.Digest != a.Digest {
		t.Fatalf("second create = %+v, %v; first digest %s", b, err, a.Digest)
	}
	waitReady(t, m, ref, time.Minute)
	c, err := m.Create(ctx, CreateRequest{Name: ref})
	if err != nil || c.Digest != a.Digest || c.Status != StatusReady || c.SizeBytes == nil || c.QueuePosition != nil {
		t.Fatalf("create after ready = %+v, %v", c, err)
	}
	// A tag-less reference is normalized to :latest and is the same image.
	d, err := m.Create(ctx, CreateRequest{Name: strings.TrimSuffix(ref, ":latest")})
	if err != nil || d.Name != ref || d.Status != StatusReady {
		t.Fatalf("create without tag = %+v, %v", d, err)
	}
}

func TestCreateErrors(t *testing.T) {
	reg := newTestRegistry(t)
	reg.push(t, "exists:v1", busyboxImage(t))
	m := newManager(t, t.TempDir(), Config{})
	cases := []struct {
		name, ref string
		class     error
		code      string
	}{
		{"unknown tag", reg.host + "/exists:nope", errdefs.ErrNotFound, "not_found"},
		{"unknown repo", reg.host + "/missing:v1", errdefs.ErrNotFound, "not_found"},
		{"unknown digest", reg.host + "/exists@sha256:" + strings.Repeat("0", 64), errdefs.ErrNotFound, "not_found"},
		{"double colon", "invalid::", errdefs.ErrInvalidArgument, "invalid_name"},
		{"spaces", "has spaces", errdefs.ErrInvalidArgument, "invalid_name"},
		{"empty", "", errdefs.ErrInvalidArgument, "invalid_name"},
		{"upper case", "Alpine", errdefs.ErrInvalidArgument, "invalid_name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Create(context.Background(), CreateRequest{Name: tc.ref})
			if !errors.Is(err, tc.class) || errdefs.Code(err) != tc.code {
				t.Fatalf("Create(%q) = %v (code %q), want class %v code %s", tc.ref, err, errdefs.Code(err), tc.class, tc.code)
			}
		})
	}
}

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"alpine":                      "docker.io/library/alpine:latest",
		"alpine:3.20":                 "docker.io/library/alpine:3.20",
		"docker.io/library/alpine":    "docker.io/library/alpine:latest",
		"ghcr.io/org/app":             "ghcr.io/org/app:latest",
		"127.0.0.1:4973/demo":         "127.0.0.1:4973/demo:latest",
		"localhost:5000/a/b:c":        "localhost:5000/a/b:c",
		"alpine@sha256:" + hex64("a"): "docker.io/library/alpine@sha256:" + hex64("a"),
	} {
		if got, err := NormalizeRef(in); err != nil || got != want {
			t.Errorf("NormalizeRef(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func hex64(c string) string { return strings.Repeat(c, 64) }

func TestQueuePositions(t *testing.T) {
	reg := newTestRegistry(t)
	refs := []string{
		reg.push(t, "q/a:v1", variant(t, "a")),
		reg.push(t, "q/b:v1", variant(t, "b")),
		reg.push(t, "q/c:v1", variant(t, "c")),
	}
	m := newManager(t, t.TempDir(), Config{MaxConcurrentPulls: 1})
	ctx := context.Background()
	reg.close() // blob downloads wait, so the first pull holds the only worker

	var created []Image
	for _, ref := range refs {
		img, err := m.Create(ctx, CreateRequest{Name: ref})
		if err != nil {
			t.Fatal(err)
		}
		created = append(created, img)
	}
	waitStatus(t, m, refs[0], StatusPulling)
	for i, want := range []int{0, 1, 2} {
		got, _ := m.WaitReady(ctx, created[i].Name, time.Millisecond)
		if pos(got.QueuePosition) != want {
			t.Errorf("image %d: queue position %v, want %d (status %s)", i, pos(got.QueuePosition), want, got.Status)
		}
	}
	if again, _ := m.Create(ctx, CreateRequest{Name: refs[2]}); pos(again.QueuePosition) != 2 {
		t.Errorf("re-create of a queued image: position %d, want 2 (deduplicated)", pos(again.QueuePosition))
	}
	reg.open()
	for _, ref := range refs {
		waitReady(t, m, ref, time.Minute)
	}
}

func pos(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

// waitStatus polls until the image named ref (tag or digest) has status s.
func waitStatus(t *testing.T, m *Manager, ref string, s Status) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		m.mu.Lock()
		rec, _, err := m.lookup(ref, true)
		ok := err == nil && rec.Status == s
		m.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never reached status %s", ref, s)
}

func TestRestartRecovery(t *testing.T) {
	reg := newTestRegistry(t)
	readyRef := reg.push(t, "r/ready:v1", variant(t, "ready"))
	slowRef := reg.push(t, "r/slow:v1", variant(t, "slow"))
	dir := t.TempDir()
	ctx := context.Background()

	m1 := newManager(t, dir, Config{MaxConcurrentPulls: 1})
	if _, err := m1.Create(ctx, CreateRequest{Name: readyRef, Tags: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	ready := waitReady(t, m1, readyRef, time.Minute)
	reg.close()
	slow, err := m1.Create(ctx, CreateRequest{Name: slowRef})
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, m1, slow.Digest, StatusPulling)
	m1.Close() // interrupts the pull

	m2 := newManager(t, dir, Config{MaxConcurrentPulls: 1})
	list, err := m2.List(ctx, nil)
	if err != nil || len(list) != 2 {
		t.Fatalf("after restart List = %+v, %v", list, err)
	}
	if got, err := m2.Get(ctx, readyRef); err != nil || got.Digest != ready.Digest || got.Status != StatusReady || got.Tags["k"] != "v" {
		t.Fatalf("ready image after restart = %+v, %v", got, err)
	}
	if got, err := m2.Get(ctx, slow.Digest); err != nil || got.Status == StatusReady || got.Status == StatusFailed {
		t.Fatalf("interrupted image after restart = %+v, %v", got, err)
	}
	reg.open()
	if got := waitReady(t, m2, slowRef, time.Minute); got.Digest != slow.Digest {
		t.Fatalf("resumed image digest %s, want %s", got.Digest, slow.Digest)
	}
}

func TestLookupTagDeleteAndDigests(t *testing.T) {
	reg := newTestRegistry(t)
	ref := reg.push(t, "t/img:v1", busyboxImage(t))
	m := newManager(t, t.TempDir(), Config{})
	ctx := context.Background()

	reg.close()
	img, err := m.Create(ctx, CreateRequest{Name: ref})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, ref); errdefs.Code(err) != "not_found" {
		t.Errorf("Get(tag) before ready = %v, want not_found", err)
	}
	byDigest := reg.host + "/t/img@" + img.Digest
	if got, err := m.Get(ctx, byDigest); err != nil || got.Name != byDigest {
		t.Errorf("Get(repo@digest) before ready = %+v, %v", got, err)
	}
	if _, err := m.WaitReady(ctx, ref, 50*time.Millisecond); errdefs.Code(err) != "image_not_ready" || !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("WaitReady while pulling = %v, want image_not_ready", err)
	}
	reg.open()
	waitReady(t, m, ref, time.Minute)

	// The same registry by another loopback name (a push through
	// http://127.0.0.1:P is also localhost:P).
	other := strings.Replace(ref, "127.0.0.1:", "localhost:", 1)
	if other == ref {
		t.Fatalf("test registry %s is not on 127.0.0.1", ref)
	}
	if got, err := m.Get(ctx, other); err != nil || got.Digest != img.Digest {
		t.Errorf("Get(%s) = %+v, %v", other, got, err)
	}

	alias := reg.host + "/t/alias:prod"
	if got, err := m.Tag(ctx, ref, alias); err != nil || got.Name != alias || got.Digest != img.Digest {
		t.Fatalf("Tag = %+v, %v", got, err)
	}
	if got, err := m.Get(ctx, img.Digest); err != nil || got.Status != StatusReady {
		t.Fatalf("Get(bare digest) = %+v, %v", got, err)
	}
	if err := m.Delete(ctx, ref); err != nil {
		t.Fatal(err)
	}
	dir := m.paths.ImageDir(strings.TrimPrefix(img.Digest, "sha256:"))
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("image dir removed while %s still points at it", alias)
	}
	if _, err := m.Get(ctx, ref); errdefs.Code(err) != "not_found" {
		t.Errorf("Get(deleted tag) = %v", err)
	}
	if err := m.Delete(ctx, alias); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("image dir still there after its last reference went: %v", err)
	}
	if err := m.Delete(ctx, alias); errdefs.Code(err) != "not_found" {
		t.Errorf("second Delete = %v, want not_found", err)
	}
}

func TestImportLocal(t *testing.T) {
	m := newManager(t, t.TempDir(), Config{})
	img := variant(t, "imported")
	got, err := m.ImportLocal(context.Background(), "127.0.0.1:4973/pushed:v1", img)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if got.Digest != want.String() {
		t.Fatalf("imported digest %s, want %s", got.Digest, want)
	}
	ready := waitReady(t, m, "127.0.0.1:4973/pushed:v1", time.Minute)
	if ready.Env["VARIANT"] != "imported" {
		t.Errorf("env = %v", ready.Env)
	}
	if !m.store.Has(want) {
		t.Error("manifest not in the OCI layout")
	}
}

func TestCreateFallsBackToLocalImage(t *testing.T) {
	m := newManager(t, t.TempDir(), Config{})
	ctx := context.Background()
	// Nothing listens on port 1, so the registry cannot be asked.
	name := "127.0.0.1:1/pushed:v1"
	if _, err := m.ImportLocal(ctx, name, variant(t, "local")); err != nil {
		t.Fatal(err)
	}
	want := waitReady(t, m, name, time.Minute)
	got, err := m.Create(ctx, CreateRequest{Name: name})
	if err != nil || got.Digest != want.Digest || got.Status != StatusReady {
		t.Fatalf("Create of a local-only image = %+v, %v", got, err)
	}
	_, err = m.Create(ctx, CreateRequest{Name: "127.0.0.1:1/other:v1"})
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(errdefs.Message(err), "cannot be reached (dial 127.0.0.1:1: connect: connection refused)") {
		t.Fatalf("Create of an unknown image on a dead registry = %v, want not_found naming the unreachable registry", err)
	}
}
