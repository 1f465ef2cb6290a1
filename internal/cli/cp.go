package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/gorilla/websocket"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func (a *app) cpCommand() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "cp [flags] SRC DST",
		Short: "Copy files between an instance and the local filesystem",
		Long: "Copy files between an instance and the local filesystem, like docker cp.\n" +
			"One side is INSTANCE:PATH. Directories are copied recursively, keeping\n" +
			"symbolic links, modes, modification times and owners (owners only when\n" +
			"run as root, for copies from an instance).",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcInst, src, srcRemote := parseCpArg(args[0])
			dstInst, dst, dstRemote := parseCpArg(args[1])
			ctx := cmd.Context()
			switch {
			case srcRemote && dstRemote:
				return errors.New("copying between two instances is not supported")
			case srcRemote:
				c := &cpClient{dial: a.cpDialer(srcInst)}
				return c.download(ctx, src, dst, follow)
			case dstRemote:
				c := &cpClient{dial: a.cpDialer(dstInst), warn: a.errOut}
				return c.upload(ctx, src, dst, follow)
			}
			return errors.New("one of SRC and DST must be INSTANCE:PATH")
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow-link", "L", false, "always follow a symbolic link in SRC")
	return cmd
}

func (a *app) cpDialer(inst string) func(context.Context) (*websocket.Conn, error) {
	return func(ctx context.Context) (*websocket.Conn, error) { return a.dialWS(ctx, inst, "cp") }
}

// parseCpArg splits INSTANCE:PATH. A local path with a colon can be
// written ./a:b (a part before the colon holding a slash is local).
func parseCpArg(arg string) (inst, p string, remote bool) {
	i := strings.IndexByte(arg, ':')
	if i <= 0 || strings.ContainsRune(arg[:i], '/') {
		return "", arg, false
	}
	return arg[:i], arg[i+1:], true
}

// cpRequest is the first message of a cp connection: the SDK's CpRequest
// plus hypeman's symlink, mtime and owner fields.
type cpRequest struct {
	Direction   string  `json:"direction"`
	GuestPath   string  `json:"guest_path"`
	IsDir       bool    `json:"is_dir,omitempty"`
	Mode        *uint32 `json:"mode,omitempty"`
	FollowLinks bool    `json:"follow_links,omitempty"`
	UID         *int    `json:"uid,omitempty"`
	GID         *int    `json:"gid,omitempty"`
	IsSymlink   bool    `json:"is_symlink,omitempty"`
	LinkTarget  string  `json:"link_target,omitempty"`
	Mtime       int64   `json:"mtime,omitempty"`
}

// cpMessage is any TEXT message the server sends.
type cpMessage struct {
	Type         string `json:"type"`
	Success      bool   `json:"success"`
	Error        string `json:"error"`
	Message      string `json:"message"`
	BytesWritten int64  `json:"bytes_written"`
	Final        bool   `json:"final"`
	// header and stat
	Path       string `json:"path"`
	Mode       uint32 `json:"mode"`
	IsDir      bool   `json:"is_dir"`
	IsFile     bool   `json:"is_file"`
	IsSymlink  bool   `json:"is_symlink"`
	LinkTarget string `json:"link_target"`
	Size       int64  `json:"size"`
	Mtime      int64  `json:"mtime"`
	UID        int    `json:"uid"`
	GID        int    `json:"gid"`
	Exists     bool   `json:"exists"`
}

// cpClient runs one hypeman cp.
type cpClient struct {
	dial func(context.Context) (*websocket.Conn, error)
	warn io.Writer
}

// open dials and sends req.
func (c *cpClient) open(ctx context.Context, req cpRequest) (*websocket.Conn, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(req)
	if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// readText reads until a TEXT message.
func readText(conn *websocket.Conn) (cpMessage, error) {
	for {
		typ, b, err := conn.ReadMessage()
		if err != nil {
			return cpMessage{}, fmt.Errorf("cp: connection ended early: %w", err)
		}
		if typ != websocket.TextMessage {
			continue
		}
		var m cpMessage
		if err := json.Unmarshal(b, &m); err != nil {
			return m, fmt.Errorf("cp: bad message %q: %w", b, err)
		}
		if m.Type == "error" {
			return m, fmt.Errorf("%s: %s", m.Path, m.Message)
		}
		return m, nil
	}
}

// stat describes a guest path.
func (c *cpClient) stat(ctx context.Context, p string, follow bool) (cpMessage, error) {
	conn, err := c.open(ctx, cpRequest{Direction: "stat", GuestPath: p, FollowLinks: follow})
	if err != nil {
		return cpMessage{}, err
	}
	defer conn.Close()
	m, err := readText(conn)
	if err == nil && m.Error != "" {
		err = fmt.Errorf("%s: %s", p, m.Error)
	}
	return m, err
}

// upload copies the local src to the guest's dst with docker cp's rules:
// into dst when it is a directory, else as dst.
func (c *cpClient) upload(ctx context.Context, src, dst string, follow bool) error {
	fi, err := os.Lstat(src)
	if err == nil && follow && fi.Mode()&os.ModeSymlink != 0 {
		fi, err = os.Stat(src)
	}
	if err != nil {
		return err
	}
	st, err := c.stat(ctx, dst, true)
	if err != nil {
		return err
	}
	target := dst
	switch {
	case st.Exists && st.IsDir && fi.IsDir() && strings.HasSuffix(src, "/."):
		// the directory's contents
	case st.Exists && st.IsDir:
		target = path.Join(dst, filepath.Base(src))
	case st.Exists && fi.IsDir():
		return fmt.Errorf("cannot copy a directory to a file: %s", dst)
	case !st.Exists && strings.HasSuffix(dst, "/") && !fi.IsDir():
		return fmt.Errorf("no such directory in the instance: %s", dst)
	}
	return c.uploadEntry(ctx, src, target, fi)
}

// uploadEntry sends one entry per connection, as the SDK does: a
// directory first (again after its contents, for its mtime), its
// entries in name order.
func (c *cpClient) uploadEntry(ctx context.Context, src, dst string, fi os.FileInfo) error {
	req := entryRequest(dst, fi)
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		req.IsSymlink, req.LinkTarget, req.Mode = true, target, nil
		return c.send(ctx, req, nil)
	case fi.IsDir():
		if err := c.send(ctx, req, nil); err != nil {
			return err
		}
		names, err := readDirNames(src)
		if err != nil {
			return err
		}
		for _, name := range names {
			cfi, err := os.Lstat(filepath.Join(src, name))
			if err != nil {
				return err
			}
			if err := c.uploadEntry(ctx, filepath.Join(src, name), path.Join(dst, name), cfi); err != nil {
				return err
			}
		}
		if len(names) > 0 {
			return c.send(ctx, req, nil) // adding entries changed its mtime
		}
		return nil
	case fi.Mode().IsRegular():
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		return c.send(ctx, req, f)
	}
	fmt.Fprintf(c.warn, "hypeman: skipping %s: not a regular file, directory or symlink\n", src)
	return nil
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

func entryRequest(dst string, fi os.FileInfo) cpRequest {
	mode := uint32(fi.Mode().Perm())
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		mode = sys.Mode & 0o7777
	}
	req := cpRequest{Direction: "to", GuestPath: dst, IsDir: fi.IsDir(), Mode: &mode, Mtime: fi.ModTime().Unix()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		uid, gid := int(sys.Uid), int(sys.Gid)
		req.UID, req.GID = &uid, &gid
	}
	return req
}

// send runs one "to" connection: the request, data (32 KiB BINARY
// frames), TEXT {"type":"end"}, then the result.
func (c *cpClient) send(ctx context.Context, req cpRequest, data io.Reader) error {
	conn, err := c.open(ctx, req)
	if err != nil {
		return err
	}
	defer conn.Close()
	if data != nil {
		buf := make([]byte, 32*1024)
		for {
			n, rerr := data.Read(buf)
			if n > 0 {
				if err := conn.WriteMessage(websocket.BinaryMessage, buf[:n]); err != nil {
					return fmt.Errorf("cp %s: %w", req.GuestPath, err)
				}
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return rerr
			}
		}
	}
	if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"end"}`)); err != nil {
		return err
	}
	m, err := readText(conn)
	if err != nil {
		return err
	}
	if m.Type != "result" || !m.Success {
		return fmt.Errorf("cp %s: %s", req.GuestPath, m.Error)
	}
	return nil
}

// download copies the guest's src to the local dst with docker cp's
// rules: into dst when it is a directory, else as dst.
func (c *cpClient) download(ctx context.Context, src, dst string, follow bool) error {
	contents := strings.HasSuffix(src, "/.")
	src = path.Clean(src)
	x := &extractor{}
	fi, err := os.Stat(dst)
	switch {
	case err == nil && fi.IsDir():
		x.base, x.root = dst, filepath.Join(dst, path.Base(src))
		if contents {
			x.root = dst
		}
	case err == nil || errors.Is(err, os.ErrNotExist):
		// dst is the new name of src (a file may overwrite a file).
		x.root, x.base, x.rename = dst, dst, true
	default:
		return err
	}
	conn, err := c.open(ctx, cpRequest{Direction: "from", GuestPath: src, FollowLinks: follow})
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := x.run(conn, fi != nil && !fi.IsDir()); err != nil {
		x.abort()
		return err
	}
	return x.finish()
}

// extractor writes the entries of a "from" stream under root: an entry
// path's first element (the copied file's name) maps to root. Paths and
// symlink targets are checked as the SDK's cp.ts does: no absolute paths,
// nothing that escapes base, the destination directory.
type extractor struct {
	root, base string
	rename     bool   // root is dst itself: base is root, or its parent for a non-directory
	rootName   string // the first entry's name
	file       *os.File
	cur        cpMessage // header of the open file
	dirs       []cpMessage
	dirPaths   []string
}

// run consumes the stream up to the final end marker. dstIsFile: the
// destination exists and is not a directory.
func (x *extractor) run(conn *websocket.Conn, dstIsFile bool) error {
	first := true
	for {
		typ, b, err := conn.ReadMessage()
		if err != nil {
			return fmt.Errorf("cp: connection ended before the final marker: %w", err)
		}
		if typ == websocket.BinaryMessage {
			if err := x.data(b); err != nil {
				return err
			}
			continue
		}
		var m cpMessage
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("cp: bad message %q: %w", b, err)
		}
		switch m.Type {
		case "header":
			if first && x.rename {
				if m.IsDir && dstIsFile {
					return fmt.Errorf("cannot copy a directory to a file: %s", x.root)
				}
				if !m.IsDir {
					x.base = filepath.Dir(x.root)
				}
			}
			first = false
			if err := x.header(m); err != nil {
				return err
			}
		case "end":
			if err := x.endFile(); err != nil {
				return err
			}
			if m.Final {
				return nil
			}
		case "error":
			return fmt.Errorf("%s: %s", m.Path, m.Message)
		}
	}
}

// target maps an entry path to a local path, refusing absolute paths and
// paths that leave the copy.
func (x *extractor) target(p string) (string, error) {
	clean := path.Clean(p)
	if path.IsAbs(clean) || filepath.IsAbs(p) {
		return "", fmt.Errorf("invalid path: absolute paths not allowed: %s", p)
	}
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("invalid path: path escapes destination: %s", p)
	}
	// The first entry names the copied file; a copy of the guest's "/"
	// is named "." and its entries are not prefixed.
	first, rest, _ := strings.Cut(clean, "/")
	if x.rootName == "" {
		x.rootName = first
	}
	switch {
	case x.rootName == ".":
		rest = clean
	case first != x.rootName:
		return "", fmt.Errorf("invalid path: %s is not under %s", p, x.rootName)
	}
	t := filepath.Join(x.root, filepath.FromSlash(rest))
	if !within(x.base, t) {
		return "", fmt.Errorf("invalid path: path escapes destination: %s", p)
	}
	return t, nil
}

// within reports whether p is base or under it.
func within(base, p string) bool {
	rel, err := filepath.Rel(filepath.Clean(base), filepath.Clean(p))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}

func (x *extractor) header(m cpMessage) error {
	if err := x.endFile(); err != nil {
		return err
	}
	t, err := x.target(m.Path)
	if err != nil {
		return err
	}
	switch {
	case m.IsDir:
		// Owner-writable while filling it; the real mode comes at the end.
		if err := os.MkdirAll(t, 0o700); err != nil {
			return err
		}
		if err := os.Chmod(t, os.FileMode(m.Mode&0o777)|0o700); err != nil {
			return err
		}
		x.dirs, x.dirPaths = append(x.dirs, m), append(x.dirPaths, t)
		return nil
	case m.IsSymlink:
		return x.symlink(t, m)
	}
	if err := os.MkdirAll(filepath.Dir(t), 0o755); err != nil {
		return err
	}
	removeIfLink(t) // never write through a link that is in the way
	f, err := os.OpenFile(t, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	x.file, x.cur = f, m
	return nil
}

func removeIfLink(p string) {
	if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		_ = os.Remove(p)
	}
}

// symlink makes a link whose target stays inside base.
func (x *extractor) symlink(t string, m cpMessage) error {
	if m.LinkTarget == "" {
		return fmt.Errorf("symlink %s missing link target", m.Path)
	}
	if path.IsAbs(m.LinkTarget) || filepath.IsAbs(m.LinkTarget) {
		return fmt.Errorf("invalid symlink target (absolute path): %s", m.LinkTarget)
	}
	if !within(x.base, filepath.Join(filepath.Dir(t), filepath.FromSlash(m.LinkTarget))) {
		return fmt.Errorf("invalid symlink target (escapes destination): %s", m.LinkTarget)
	}
	if err := os.MkdirAll(filepath.Dir(t), 0o755); err != nil {
		return err
	}
	if fi, err := os.Lstat(t); err == nil && !fi.IsDir() {
		_ = os.Remove(t)
	}
	if err := os.Symlink(m.LinkTarget, t); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		_ = os.Lchown(t, m.UID, m.GID)
	}
	if m.Mtime > 0 {
		tv := []unix.Timeval{{Sec: m.Mtime}, {Sec: m.Mtime}}
		_ = unix.Lutimes(t, tv)
	}
	return nil
}

func (x *extractor) data(b []byte) error {
	if x.file == nil {
		return nil // data outside a file: ignored, as cp.ts does
	}
	_, err := x.file.Write(b)
	return err
}

// endFile closes the open file and applies its mode, owner and mtime.
func (x *extractor) endFile() error {
	f := x.file
	if f == nil {
		return nil
	}
	x.file = nil
	if err := f.Close(); err != nil {
		return err
	}
	return applyAttrs(f.Name(), x.cur)
}

// applyAttrs sets mode (with setuid, setgid and sticky bits), owner (as
// root only) and mtime.
func applyAttrs(p string, m cpMessage) error {
	if os.Geteuid() == 0 {
		if err := os.Lchown(p, m.UID, m.GID); err != nil {
			return err
		}
	}
	if err := unix.Chmod(p, m.Mode&0o7777); err != nil {
		return err
	}
	if m.Mtime > 0 {
		t := unix.NsecToTimespec(m.Mtime * 1e9)
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{t, t}, unix.AT_SYMLINK_NOFOLLOW)
	}
	return nil
}

// finish applies the directories' attributes, deepest first (their
// contents are complete).
func (x *extractor) finish() error {
	if err := x.endFile(); err != nil {
		return err
	}
	for i := len(x.dirs) - 1; i >= 0; i-- {
		if err := applyAttrs(x.dirPaths[i], x.dirs[i]); err != nil {
			return err
		}
	}
	return nil
}

// abort closes an open file after a failure (what was written stays).
func (x *extractor) abort() {
	if x.file != nil {
		x.file.Close()
		x.file = nil
	}
}
