package testimage

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// epoch is the timestamp of every file and config the builders make.
var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// BusyboxApplets are the commands symlinked to /bin/busybox in the image.
var BusyboxApplets = []string{
	"sh", "ash", "httpd", "echo", "cat", "ls", "sleep", "mkdir", "rm", "cp", "mv",
	"ps", "env", "id", "hostname", "ip", "mount", "umount", "uname", "true", "false",
	"wget", "nc", "grep", "sed", "head", "tail", "wc", "date", "df", "du", "free",
	"kill", "ln", "chmod", "chown", "touch", "find", "sync", "dd", "printf", "stat",
	"top", "vi", "which", "whoami", "yes", "tee", "seq", "md5sum", "sha256sum", "test",
}

// BusyboxIndexHTML is the content of /www/index.html in the busybox image.
const BusyboxIndexHTML = "hello from hypeman demo\n"

// BusyboxCmd is the busybox image's command: greet on stdout, then serve
// /www on port 80 in the foreground.
var BusyboxCmd = []string{"/bin/sh", "-c", "echo hello from hypeman demo; exec httpd -f -p 80 -h /www"}

// Busybox builds a one-layer OCI image holding /bin/busybox from Debian's
// busybox-static package (fetched with apt-get download and cached as a .deb
// in workdir), symlinks for BusyboxApplets, /www/index.html and the usual
// empty directories. Its command is BusyboxCmd.
func Busybox(ctx context.Context, workdir string) (v1.Image, error) {
	bin, err := busyboxBinary(ctx, workdir)
	if err != nil {
		return nil, fmt.Errorf("testimage: busybox: %w", err)
	}
	layer, err := busyboxLayer(bin)
	if err != nil {
		return nil, fmt.Errorf("testimage: busybox: %w", err)
	}
	return newImage(layer, v1.Config{
		Cmd:          BusyboxCmd,
		Env:          []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		ExposedPorts: map[string]struct{}{"80/tcp": {}},
		WorkingDir:   "/",
	})
}

// busyboxBinary returns the content of bin/busybox from the cached .deb,
// downloading it first when workdir has none.
func busyboxBinary(ctx context.Context, workdir string) ([]byte, error) {
	if err := os.MkdirAll(workdir, 0o755); err != nil {
		return nil, err
	}
	var deb string
	err := withLock(filepath.Join(workdir, "busybox-static.lock"), func() (err error) {
		deb, err = cachedDeb(ctx, workdir, "busybox-static")
		return err
	})
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(workdir, ".busybox-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := run(ctx, "", "dpkg-deb", "-x", deb, tmp); err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(tmp, "bin", "busybox"))
}

// cachedDeb returns the path of pkg's .deb in dir, running apt-get download
// there when it is missing.
func cachedDeb(ctx context.Context, dir, pkg string) (string, error) {
	find := func() string {
		m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
		if len(m) > 0 {
			return m[len(m)-1]
		}
		return ""
	}
	if p := find(); p != "" {
		return p, nil
	}
	if err := run(ctx, dir, "apt-get", "download", "-q", pkg); err != nil {
		return "", err
	}
	if p := find(); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("apt-get download %s left no .deb in %s", pkg, dir)
}

func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(out.String(), 2000))
	}
	return nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// busyboxLayer writes the busybox file tree as an uncompressed tar.
func busyboxLayer(bin []byte) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdrs := []*tar.Header{}
	for _, d := range []string{"bin", "dev", "etc", "proc", "root", "run", "sys", "tmp", "var", "www"} {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		hdrs = append(hdrs, &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode})
	}
	for _, a := range BusyboxApplets {
		hdrs = append(hdrs, &tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777})
	}
	files := []struct {
		name string
		mode int64
		data []byte
	}{
		{"bin/busybox", 0o755, bin},
		{"www/index.html", 0o644, []byte(BusyboxIndexHTML)},
		{"etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		{"etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
	for _, f := range files {
		if err := writeEntry(tw, &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data))}, f.data); err != nil {
			return nil, err
		}
	}
	for _, h := range hdrs {
		if err := writeEntry(tw, h, nil); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return layerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
}

func writeEntry(tw *tar.Writer, h *tar.Header, data []byte) error {
	h.ModTime = epoch
	h.Format = tar.FormatPAX
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}
