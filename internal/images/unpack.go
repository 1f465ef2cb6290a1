package images

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// unpack extracts the tar stream r into the existing directory root. It must
// run as root: it keeps owners, modes (setuid and sticky bits included),
// symlinks, hard links, device nodes, fifos, xattrs and modification times.
//
// Every path is resolved inside root with openat2(RESOLVE_IN_ROOT), so an
// archive with absolute symlinks or ".." components (an image's /bin ->
// /usr/bin, or a hostile one) can never make us write outside root.
// Directories an entry needs but the archive has not created yet (flattened
// images list a layer's files before the lower layer's directories) are made
// 0755 root:root and fixed up when their own entry arrives.
func unpack(ctx context.Context, r io.Reader, root string) error {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", root, err)
	}
	u := &unpacker{root: fd}
	defer unix.Close(fd)
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read layer: %w", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return fmt.Errorf("unpack %s: %w", hdr.Name, err)
		}
	}
	return u.finish()
}

type unpacker struct {
	root  int           // O_PATH fd of the target directory
	dirs  []*tar.Header // directory entries; metadata applied last
	links []*tar.Header // hard links whose target was not there yet
}

// resolveFlags keep resolution inside the root and refuse /proc magic links.
const resolveFlags = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// openIn opens p (relative to the root, symlinks resolved inside it).
func (u *unpacker) openIn(p string, flags uint64) (int, error) {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	if p == "" {
		p = "."
	}
	how := &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Resolve: resolveFlags}
	for {
		fd, err := unix.Openat2(u.root, p, how)
		if err != unix.EINTR && err != unix.EAGAIN {
			return fd, err
		}
	}
}

// parent opens the directory that will hold entry p, creating missing
// directories, and returns it with p's last element.
func (u *unpacker) parent(p string) (int, string, error) {
	dir, base := path.Split(path.Clean("/" + p))
	fd, err := u.openIn(dir, unix.O_PATH|unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOENT) {
		if err = u.mkdirAll(dir); err == nil {
			fd, err = u.openIn(dir, unix.O_PATH|unix.O_DIRECTORY)
		}
	}
	if err != nil {
		return -1, "", fmt.Errorf("open parent %s: %w", dir, err)
	}
	return fd, base, nil
}

func (u *unpacker) mkdirAll(dir string) error {
	parts := strings.Split(strings.Trim(dir, "/"), "/")
	for i := range parts {
		pfd, err := u.openIn(strings.Join(parts[:i], "/"), unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		err = unix.Mkdirat(pfd, parts[i], 0o755)
		unix.Close(pfd)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
	}
	return nil
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	if path.Clean("/"+hdr.Name) == "/" {
		if hdr.Typeflag == tar.TypeDir {
			u.dirs = append(u.dirs, hdr)
		}
		return nil
	}
	pfd, base, err := u.parent(hdr.Name)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	switch hdr.Typeflag {
	case tar.TypeDir:
		return u.dir(pfd, base, hdr)
	case tar.TypeReg, tar.TypeRegA:
		return u.file(pfd, base, hdr, r)
	case tar.TypeSymlink:
		if err := u.replace(pfd, base); err != nil {
			return err
		}
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return err
		}
		return applyMeta(pfd, base, hdr)
	case tar.TypeLink:
		return u.link(pfd, base, hdr, true)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return u.node(pfd, base, hdr)
	default:
		return nil // pax global headers and the like carry no file
	}
}

// replace removes whatever non-directory sits at base.
func (u *unpacker) replace(pfd int, base string) error {
	err := unix.Unlinkat(pfd, base, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("replace %s: %w", base, err)
}

func (u *unpacker) dir(pfd int, base string, hdr *tar.Header) error {
	err := unix.Mkdirat(pfd, base, 0o700)
	if errors.Is(err, unix.EEXIST) {
		var st unix.Stat_t
		if err = unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err = u.replace(pfd, base); err == nil {
				err = unix.Mkdirat(pfd, base, 0o700)
			}
		}
	}
	if err != nil {
		return err
	}
	u.dirs = append(u.dirs, hdr)
	return nil
}

func (u *unpacker) file(pfd int, base string, hdr *tar.Header, r io.Reader) error {
	if err := u.replace(pfd, base); err != nil {
		return err
	}
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), base)
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return applyMeta(pfd, base, hdr)
}

func (u *unpacker) node(pfd int, base string, hdr *tar.Header) error {
	if err := u.replace(pfd, base); err != nil {
		return err
	}
	mode := uint32(unix.S_IFIFO)
	switch hdr.Typeflag {
	case tar.TypeChar:
		mode = unix.S_IFCHR
	case tar.TypeBlock:
		mode = unix.S_IFBLK
	}
	dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	if err := unix.Mknodat(pfd, base, mode|0o600, int(dev)); err != nil {
		return err
	}
	return applyMeta(pfd, base, hdr)
}

// link makes base a hard link to hdr.Linkname. When the target does not exist
// yet and defer is set, the link is retried in finish.
func (u *unpacker) link(pfd int, base string, hdr *tar.Header, canDefer bool) error {
	tfd, err := u.openIn(hdr.Linkname, unix.O_PATH|unix.O_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) && canDefer {
		u.links = append(u.links, hdr)
		return nil
	}
	if err != nil {
		return fmt.Errorf("link target %s: %w", hdr.Linkname, err)
	}
	defer unix.Close(tfd)
	if err := u.replace(pfd, base); err != nil {
		return err
	}
	// AT_EMPTY_PATH links the file tfd refers to (needs CAP_DAC_READ_SEARCH,
	// which root has) without resolving any path outside the root.
	return unix.Linkat(tfd, "", pfd, base, unix.AT_EMPTY_PATH)
}

// finish makes the deferred hard links, then applies directory metadata
// deepest first (adding entries would otherwise change their mtimes).
func (u *unpacker) finish() error {
	for _, hdr := range u.links {
		pfd, base, err := u.parent(hdr.Name)
		if err != nil {
			return err
		}
		err = u.link(pfd, base, hdr, false)
		unix.Close(pfd)
		if err != nil {
			return fmt.Errorf("unpack %s: %w", hdr.Name, err)
		}
	}
	for i := len(u.dirs) - 1; i >= 0; i-- {
		if err := u.dirMeta(u.dirs[i]); err != nil {
			return fmt.Errorf("unpack %s: %w", u.dirs[i].Name, err)
		}
	}
	return nil
}

func (u *unpacker) dirMeta(hdr *tar.Header) error {
	if path.Clean("/"+hdr.Name) == "/" {
		return applyMeta(u.root, ".", hdr)
	}
	pfd, base, err := u.parent(hdr.Name)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	return applyMeta(pfd, base, hdr)
}

// applyMeta sets owner, mode, xattrs and times of base in directory pfd
// without following a final symlink. The mode is set after the owner because
// chown clears setuid and setgid bits.
func applyMeta(pfd int, base string, hdr *tar.Header) error {
	if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := unix.Fchmodat(pfd, base, uint32(hdr.Mode&0o7777), 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if err := setXattrs(pfd, base, hdr); err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(hdr.AccessTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if hdr.AccessTime.IsZero() {
		ts[0] = ts[1]
	}
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// setXattrs applies the SCHILY.xattr.* PAX records. The path goes through
// /proc/self/fd so the parent is the already-resolved pfd; Lsetxattr does not
// follow base itself.
func setXattrs(pfd int, base string, hdr *tar.Header) error {
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		p := "/proc/self/fd/" + strconv.Itoa(pfd) + "/" + base
		if err := unix.Lsetxattr(p, attr, []byte(v), 0); err != nil {
			return fmt.Errorf("set xattr %s: %w", attr, err)
		}
	}
	return nil
}
