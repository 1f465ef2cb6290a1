package images

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hypeman-vm/hypeman/internal/testimage"
)

// TestPullDebianNginx pulls and converts a real Debian root file system with
// nginx (about 230 MB unpacked). The first run builds it with debootstrap
// (about 40 s); the result is cached in testimage.DefaultCacheDir.
func TestPullDebianNginx(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the Debian image (debootstrap and a 230 MB conversion)")
	}
	ctx := context.Background()
	start := time.Now()
	img, err := testimage.Debian(ctx, testimage.DefaultCacheDir, "", []string{"nginx-light"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("debian image built (or loaded from cache) in %v", time.Since(start))
	reg := newTestRegistry(t)
	ref := reg.push(t, "debian/nginx:bookworm", img)
	m := newManager(t, t.TempDir(), Config{})

	start = time.Now()
	if _, err := m.Create(ctx, CreateRequest{Name: ref}); err != nil {
		t.Fatal(err)
	}
	ready := waitReady(t, m, ref, 5*time.Minute)
	t.Logf("debian nginx pull+convert: %v, rootfs.erofs %d MB", time.Since(start), *ready.SizeBytes>>20)

	if got := strings.Join(ready.Cmd, " "); got != "nginx -g daemon off;" {
		t.Errorf("cmd = %q", got)
	}
	rootfs := m.RootfsPath(ready.Digest)
	if out := dumpErofs(t, rootfs, "/usr/sbin/nginx"); !strings.Contains(out, "regular file") || !strings.Contains(out, "Access: 0755") {
		t.Errorf("/usr/sbin/nginx in erofs:\n%s", out)
	}
	if out := dumpErofs(t, rootfs, "/bin"); !strings.Contains(out, "symlink") {
		t.Errorf("/bin should be the merged-/usr symlink:\n%s", out)
	}
}
