package e2e

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestPullFromLoopbackRegistry pulls an image from a registry served by
// the test on loopback (plain HTTP), then boots it.
func TestPullFromLoopbackRegistry(t *testing.T) {
	t.Parallel()
	d, _ := shared(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: registry.New()}}
	srv.Start()
	defer srv.Close()
	img, err := tarball.ImageFromPath(imageTar(t, "busybox"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ref := ln.Addr().String() + "/upstream/busybox:v1"
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	var created struct{ Name, Digest, Status string }
	st, raw := d.do("POST", "/images", map[string]any{"name": ref}, &created)
	if st != 202 || created.Name != ref || !strings.HasPrefix(created.Digest, "sha256:") {
		t.Fatalf("POST /images: %d %s", st, raw)
	}
	if err := waitImageReady(d, ref); err != nil {
		t.Fatal(err)
	}
	in := create(t, d, map[string]any{"name": "pulled", "image": ref})
	waitState(t, d, in.ID, "Running")
	waitLog(t, d, in.ID, "hello from hypeman demo")
}

// TestSkopeoPush pushes with skopeo, a third-party registry client.
func TestSkopeoPush(t *testing.T) {
	t.Parallel()
	d, _ := shared(t)
	dest := "docker://" + d.addr + "/skopeo/demo:v1"
	out, err := exec.Command("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", "hypeman:"+d.token,
		"docker-archive:"+imageTar(t, "busybox"), dest).CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	if err := waitImageReady(d, d.addr+"/skopeo/demo:v1"); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("skopeo", "copy", "--dest-tls-verify=false",
		"docker-archive:"+imageTar(t, "busybox"), "docker://"+d.addr+"/skopeo/denied:v1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "unauthorized") {
		t.Fatalf("push without credentials should be refused: %v\n%s", err, out)
	}
}

// TestDebianNginx is the real-world input: a Debian 12 root file system
// made with debootstrap (nginx-light), pushed to /v2, booted with nginx as
// its program, serving HTTP to the test namespace.
func TestDebianNginx(t *testing.T) {
	t.Parallel()
	d, _ := shared(t)
	out, err := d.cli(t, "push", imageTar(t, "nginx"), "debian/nginx:bookworm")
	if err != nil {
		t.Fatal(err)
	}
	img := strings.SplitN(strings.TrimSpace(out), "@", 2)[0] + ":bookworm"
	if err := waitImageReady(d, img); err != nil {
		t.Fatal(err)
	}
	in := create(t, d, map[string]any{"name": "nginx", "image": img})
	in = waitState(t, d, in.ID, "Running")
	body, err := httpGet("http://"+in.Network.IP+"/", 90*time.Second)
	if err != nil || !strings.Contains(body, "Welcome to nginx") {
		t.Fatalf("nginx answered %q, %v\napp log:\n%s", body, err, appLog(t, d, in.ID))
	}
}
