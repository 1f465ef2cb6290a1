package testimage

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// DefaultMirror is used when the machine's apt sources name no mirror.
const DefaultMirror = "http://deb.debian.org/debian"

// DebianSuite is the release Debian builds.
const DebianSuite = "bookworm"

// NginxCmd runs nginx in the foreground; it is the Debian image's command.
var NginxCmd = []string{"nginx", "-g", "daemon off;"}

// Debian builds a one-layer OCI image of a minimal Debian root file system:
// debootstrap --variant=minbase --include=<include> bookworm <dir> <mirror>.
// An empty mirror means AptMirror(). The packed layer is cached in workdir
// under a name derived from the inputs, so only the first call for a given
// set of inputs runs debootstrap (about 30 s). The image's command is NginxCmd
// (include nginx-light, or another nginx, for it to work).
func Debian(ctx context.Context, workdir, mirror string, include []string) (v1.Image, error) {
	if mirror == "" {
		mirror = AptMirror()
	}
	if err := os.MkdirAll(workdir, 0o755); err != nil {
		return nil, fmt.Errorf("testimage: debian: %w", err)
	}
	layerPath := filepath.Join(workdir, "debian-"+debianKey(mirror, include)+".tar.gz")
	err := withLock(layerPath+".lock", func() error {
		if _, err := os.Stat(layerPath); err == nil {
			return nil
		}
		return buildDebianLayer(ctx, workdir, mirror, include, layerPath)
	})
	if err != nil {
		return nil, fmt.Errorf("testimage: debian: %w", err)
	}
	layer, err := layerFromOpener(func() (io.ReadCloser, error) { return os.Open(layerPath) })
	if err != nil {
		return nil, fmt.Errorf("testimage: debian: %w", err)
	}
	return newImage(layer, v1.Config{
		Cmd:          NginxCmd,
		Env:          []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		ExposedPorts: map[string]struct{}{"80/tcp": {}},
		WorkingDir:   "/",
	})
}

// debianKey names the cache entry for a set of inputs.
func debianKey(mirror string, include []string) string {
	inc := append([]string(nil), include...)
	sort.Strings(inc)
	sum := sha256.Sum256([]byte(strings.Join([]string{"v1", DebianSuite, "minbase", mirror, strings.Join(inc, ",")}, "\n")))
	return hex.EncodeToString(sum[:8])
}

// AptMirror returns the first Debian mirror named in the machine's apt
// sources (deb822 debian.sources, then sources.list), or DefaultMirror.
func AptMirror() string {
	if m := mirrorFrom("/etc/apt/sources.list.d/debian.sources", "URIs:"); m != "" {
		return m
	}
	if m := mirrorFrom("/etc/apt/sources.list", "deb "); m != "" {
		return m
	}
	return DefaultMirror
}

// mirrorFrom finds the first line starting with prefix whose URI is a main
// Debian archive (not debian-security).
func mirrorFrom(path, prefix string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		for _, field := range strings.Fields(rest) {
			if strings.HasPrefix(field, "http") && !strings.Contains(field, "security") {
				return strings.TrimSuffix(field, "/")
			}
		}
	}
	return ""
}

// buildDebianLayer runs debootstrap into a scratch directory and packs it
// into a gzipped tar at out (via a temporary file renamed into place).
func buildDebianLayer(ctx context.Context, workdir, mirror string, include []string, out string) error {
	root, err := os.MkdirTemp(workdir, ".debootstrap-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	args := []string{"--variant=minbase"}
	if len(include) > 0 {
		args = append(args, "--include="+strings.Join(include, ","))
	}
	args = append(args, DebianSuite, root, mirror)
	if err := run(ctx, "", "debootstrap", args...); err != nil {
		return err
	}
	for _, junk := range []string{"var/cache/apt/archives", "var/lib/apt/lists", "debootstrap"} {
		clearDir(filepath.Join(root, junk))
	}
	tmp := out + ".tmp"
	defer os.Remove(tmp)
	if err := writeTarGz(ctx, root, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, out) // tmp is ours alone: callers hold the lock
}

// clearDir empties dir but keeps it (and its lock and partial subdirs' mode).
func clearDir(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		os.Remove(filepath.Join(dir, e.Name()))
	}
}

// writeTarGz packs the tree at root, with owners, modes, hard links, device
// nodes and xattrs, into a gzipped tar file at out.
func writeTarGz(ctx context.Context, root, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	gz, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	tw := tar.NewWriter(gz)
	links := map[[2]uint64]string{} // (dev, inode) -> first path seen
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || ctx.Err() != nil {
			return errors.Join(err, ctx.Err())
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		return addEntry(tw, p, rel, links)
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return f.Sync()
}

func addEntry(tw *tar.Writer, p, rel string, links map[[2]uint64]string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	target := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		if target, err = os.Readlink(p); err != nil {
			return err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, target)
	if err != nil {
		return err
	}
	hdr.Name, hdr.Uname, hdr.Gname, hdr.Format = rel, "", "", tar.FormatPAX
	if fi.IsDir() {
		hdr.Name += "/"
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().IsRegular() && st.Nlink > 1 {
		key := [2]uint64{st.Dev, st.Ino}
		if first, ok := links[key]; ok {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
		} else {
			links[key] = rel
		}
	}
	addXattrs(hdr, p)
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	src, err := os.Open(p)
	if err != nil {
		return err
	}
	defer src.Close()
	_, err = io.Copy(tw, src)
	return err
}

// addXattrs records p's extended attributes (e.g. security.capability) as
// SCHILY.xattr PAX records.
func addXattrs(hdr *tar.Header, p string) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return
	}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		val := make([]byte, 4096)
		vn, err := unix.Lgetxattr(p, name, val)
		if err != nil {
			continue
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+name] = string(val[:vn])
	}
}
