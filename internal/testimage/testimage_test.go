package testimage

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// files lists the entries of img's (single) layer by name.
func files(t *testing.T, img v1.Image) map[string]*tar.Header {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Clean(h.Name)] = h
	}
}

func TestBusybox(t *testing.T) {
	ctx := context.Background()
	img, err := Busybox(ctx, DefaultCacheDir)
	if err != nil {
		t.Fatal(err)
	}
	mt, _ := img.MediaType()
	if mt != types.OCIManifestSchema1 {
		t.Errorf("media type %s, want OCI", mt)
	}
	cf, err := img.ConfigFile()
	if err != nil || cf.OS != "linux" || cf.Architecture != "amd64" || len(cf.Config.Cmd) != 3 {
		t.Fatalf("config %+v, %v", cf, err)
	}
	fs := files(t, img)
	if h := fs["bin/busybox"]; h == nil || h.Mode != 0o755 || h.Size < 1<<20 {
		t.Errorf("bin/busybox = %+v", h)
	}
	for _, a := range []string{"sh", "httpd", "echo", "cat", "ls", "sleep"} {
		if h := fs["bin/"+a]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("bin/%s = %+v", a, h)
		}
	}
	if fs["www/index.html"] == nil {
		t.Error("no www/index.html")
	}
	again, err := Busybox(ctx, DefaultCacheDir)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("digest changed between builds: %s, %s", d1, d2)
	}
}

func TestDebian(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping debootstrap")
	}
	img, err := Debian(context.Background(), DefaultCacheDir, "", []string{"nginx-light"})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil || len(cf.Config.Cmd) != 3 || cf.Config.Cmd[0] != "nginx" {
		t.Fatalf("config %+v, %v", cf, err)
	}
	fs := files(t, img)
	for _, p := range []string{"usr/sbin/nginx", "etc/nginx/nginx.conf", "usr/bin/bash"} {
		if fs[p] == nil {
			t.Errorf("%s missing from the layer", p)
		}
	}
	if h := fs["bin"]; h == nil || h.Typeflag != tar.TypeSymlink {
		t.Errorf("bin = %+v, want the merged-/usr symlink", h)
	}
}

func TestMirrorFromSources(t *testing.T) {
	dir := t.TempDir()
	deb822 := filepath.Join(dir, "debian.sources")
	os.WriteFile(deb822, []byte("Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"), 0o644)
	if got := mirrorFrom(deb822, "URIs:"); got != "http://mirror.example/debian" {
		t.Errorf("deb822 mirror = %q", got)
	}
	list := filepath.Join(dir, "sources.list")
	os.WriteFile(list, []byte("# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n"), 0o644)
	if got := mirrorFrom(list, "deb "); got != "http://other.example/debian" {
		t.Errorf("sources.list mirror = %q", got)
	}
	if debianKey("m", []string{"b", "a"}) != debianKey("m", []string{"a", "b"}) {
		t.Error("cache key depends on package order")
	}
}
