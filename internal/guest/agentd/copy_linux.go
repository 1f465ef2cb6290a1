package agentd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

// abs resolves a request's path: relative paths are relative to the
// agent's working directory (the program's).
func (s *Server) abs(p string) string {
	if !filepath.IsAbs(p) {
		p = filepath.Join(s.dir, p)
	}
	return filepath.Clean(p)
}

func (s *Server) copyTo(ctx context.Context, st io.ReadWriter, req *proto.Request) error {
	r := req.CopyTo
	if r == nil {
		return errMissing(proto.MethodCopyTo)
	}
	if r.Path == "" {
		return errors.New("cp_to: empty path")
	}
	p := s.abs(r.Path)
	var n int64
	var err error
	switch {
	case r.IsDir:
		err = makeDir(p, r)
	case r.Symlink != "":
		err = makeSymlink(p, r)
	case req.Bulk != nil && s.bulk != nil:
		n, err = s.receiveBulk(ctx, st, p, r, req.Bulk)
	case req.Bulk != nil:
		return errors.New(proto.ErrNoBulk)
	default:
		n, err = receiveFile(st, p, r)
	}
	if err != nil {
		return err
	}
	return sendResult(st, proto.CopyResult{BytesWritten: n})
}

func makeDir(p string, r *proto.CopyToRequest) error {
	if err := os.MkdirAll(p, 0o755); err != nil {
		return err
	}
	if err := setOwner(p, r, false); err != nil {
		return err
	}
	if err := os.Chmod(p, fileMode(r.Mode)); err != nil {
		return err
	}
	return setMtime(p, r.Mtime, false)
}

// makeSymlink makes (or replaces) a symbolic link: a new link under a
// temporary name, renamed over the old one.
func makeSymlink(p string, r *proto.CopyToRequest) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.hypeman-%d", p, time.Now().UnixNano())
	if err := os.Symlink(r.Symlink, tmp); err != nil {
		return err
	}
	err := setOwner(tmp, r, true)
	if err == nil {
		err = setMtime(tmp, r.Mtime, true)
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// receiveFile writes the Data frames that follow, up to the EOF, to p: into
// a temporary file in p's directory, synced and given its mode, owner and
// mtime, then renamed into place, so p is never seen half written. After a
// local failure it still reads up to the EOF, so the client (which sends
// everything before reading the reply) gets the error.
func receiveFile(st io.Reader, p string, r *proto.CopyToRequest) (int64, error) {
	var f *os.File
	err := os.MkdirAll(filepath.Dir(p), 0o755)
	if err == nil {
		f, err = os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".hypeman-*")
	}
	// Receiving and writing overlap: frames are read into a few rotating
	// buffers while a second goroutine writes the previous ones.
	var w *pipelinedWriter
	if err == nil {
		w = newPipelinedWriter(f)
	}
	bufs := [3][]byte{}
	for i := 0; ; i = (i + 1) % len(bufs) {
		if w != nil {
			w.reuse(i) // wait until buffer i is written
		}
		typ, payload, rerr := proto.ReadMsg(st, bufs[i])
		if rerr != nil {
			err = fmt.Errorf("cp_to: read: %w", rerr)
			break
		}
		bufs[i] = payload[:cap(payload)]
		if typ == proto.TypeEOF {
			break
		}
		if typ != proto.TypeData {
			err = fmt.Errorf("cp_to: unexpected frame %q", typ)
			break
		}
		if err == nil {
			w.write(i, payload)
		}
	}
	var n int64
	if w != nil {
		var werr error
		n, werr = w.close()
		if err == nil {
			err = werr
		}
	}
	if err == nil {
		err = finishFile(f, p, r)
	}
	if err != nil {
		if f != nil {
			f.Close()
			_ = os.Remove(f.Name())
		}
		return 0, err
	}
	return n, nil
}

// pipelinedWriter writes buffers to a file in its own goroutine.
type pipelinedWriter struct {
	f    *os.File
	jobs chan job
	done [3]chan struct{}
	n    int64
	err  error
	end  chan struct{}
}

type job struct {
	i int
	b []byte
}

func newPipelinedWriter(f *os.File) *pipelinedWriter {
	w := &pipelinedWriter{f: f, jobs: make(chan job, 3), end: make(chan struct{})}
	for i := range w.done {
		w.done[i] = make(chan struct{}, 1)
		w.done[i] <- struct{}{}
	}
	go func() {
		defer close(w.end)
		for j := range w.jobs {
			if w.err == nil {
				var k int
				k, w.err = f.Write(j.b)
				w.n += int64(k)
			}
			w.done[j.i] <- struct{}{}
		}
	}()
	return w
}

// reuse waits until buffer i may be filled again.
func (w *pipelinedWriter) reuse(i int) { <-w.done[i] }

// write queues buffer i's payload; call reuse(i) before filling it again.
func (w *pipelinedWriter) write(i int, b []byte) { w.jobs <- job{i, b} }

func (w *pipelinedWriter) close() (int64, error) {
	close(w.jobs)
	<-w.end
	return w.n, w.err
}

func finishFile(f *os.File, p string, r *proto.CopyToRequest) error {
	if err := f.Sync(); err != nil {
		return err
	}
	// Owner first: chown clears the setuid and setgid bits.
	if err := setOwner(f.Name(), r, false); err != nil {
		return err
	}
	if err := f.Chmod(fileMode(r.Mode)); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := setMtime(f.Name(), r.Mtime, false); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}

func setOwner(p string, r *proto.CopyToRequest, link bool) error {
	if r.UID == nil && r.GID == nil {
		return nil
	}
	uid, gid := -1, -1
	if r.UID != nil {
		uid = *r.UID
	}
	if r.GID != nil {
		gid = *r.GID
	}
	if link {
		return os.Lchown(p, uid, gid)
	}
	return os.Chown(p, uid, gid)
}

// setMtime sets p's modification time (unix seconds) and leaves its access
// time alone; 0 means unset.
func setMtime(p string, mtime int64, link bool) error {
	if mtime == 0 {
		return nil
	}
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(mtime * int64(time.Second))}
	flags := 0
	if link {
		flags = unix.AT_SYMLINK_NOFOLLOW
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, flags); err != nil {
		return &fs.PathError{Op: "utimes", Path: p, Err: err}
	}
	return nil
}

// fileMode converts unix permission bits (with setuid, setgid, sticky) to
// an os.FileMode.
func fileMode(m uint32) os.FileMode {
	fm := os.FileMode(m & 0o777)
	if m&unix.S_ISUID != 0 {
		fm |= os.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		fm |= os.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

func (s *Server) copyFrom(ctx context.Context, st io.ReadWriter, req *proto.Request) error {
	r := req.CopyFrom
	if r == nil {
		return errMissing(proto.MethodCopyFrom)
	}
	root := s.abs(r.Path)
	fi, err := statPath(root, r.FollowLinks)
	if err != nil {
		return err
	}
	name := filepath.Base(root)
	if root == "/" {
		name = "."
	}
	var out io.Writer = st
	if req.Bulk != nil {
		if s.bulk == nil {
			return errors.New(proto.ErrNoBulk)
		}
		s.bulk.mu.Lock()
		defer s.bulk.mu.Unlock()
		defer s.bulk.abortOn(ctx)()
		out = &bulkOut{Writer: st, port: s.bulk, token: req.Bulk.Token}
	}
	if err := sendTree(ctx, out, root, name, fi); err != nil {
		return err
	}
	return sendResult(st, nil)
}

// statPath is os.Stat or os.Lstat. A path through a non-directory is
// reported as missing.
func statPath(p string, follow bool) (fs.FileInfo, error) {
	var fi fs.FileInfo
	var err error
	if follow {
		fi, err = os.Stat(p)
	} else {
		fi, err = os.Lstat(p)
	}
	if errors.Is(err, syscall.ENOTDIR) {
		err = &fs.PathError{Op: "stat", Path: p, Err: fs.ErrNotExist}
	}
	return fi, err
}

// sendTree sends the entry abs (named rel in the listing) and, for a
// directory, everything under it, parents first. Symbolic links inside
// the tree are sent as links, never followed (FollowLinks applies to the
// requested path only, as with cp -H, so a link cannot loop the walk or
// lead it out of the tree). Devices, fifos and sockets are skipped.
func sendTree(ctx context.Context, w io.Writer, abs, rel string, fi fs.FileInfo) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	switch {
	case fi.Mode().IsRegular():
		return sendFile(w, abs, rel)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(abs)
		if err != nil {
			return err
		}
		e := entry(fi, rel)
		e.IsSymlink, e.LinkTarget = true, target
		return proto.WriteJSON(w, proto.TypeHeader, e)
	case fi.IsDir():
		return sendDir(ctx, w, abs, rel, fi)
	}
	return nil
}

func sendDir(ctx context.Context, w io.Writer, abs, rel string, fi fs.FileInfo) error {
	e := entry(fi, rel)
	e.IsDir = true
	if err := proto.WriteJSON(w, proto.TypeHeader, e); err != nil {
		return err
	}
	ents, err := os.ReadDir(abs)
	if err != nil {
		return err
	}
	for _, de := range ents {
		child := filepath.Join(abs, de.Name())
		cfi, err := os.Lstat(child)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed while we walk
		}
		if err != nil {
			return err
		}
		if err := sendTree(ctx, w, child, path.Join(rel, de.Name()), cfi); err != nil {
			return err
		}
	}
	return nil
}

// sendFile sends a regular file's entry and exactly Size bytes of content
// (the size when it was opened: a file that grows is cut, one that shrinks
// is padded with zeros, so a client may rely on Size as tar does), then
// an EOF.
func sendFile(w io.Writer, abs, rel string) error {
	if out, ok := w.(*bulkOut); ok {
		return sendFileBulk(out, abs, rel)
	}
	f, err := os.Open(abs)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	e := entry(fi, rel)
	if err := proto.WriteJSON(w, proto.TypeHeader, e); err != nil {
		return err
	}
	// The file is read straight into the frame buffer (no copy), one chunk
	// ahead of the frame being sent.
	chunks := make(chan []byte, 1)
	free := make(chan []byte, 2)
	free <- make([]byte, proto.Headroom+chunkSize)
	free <- make([]byte, proto.Headroom+chunkSize)
	readErr := make(chan error, 1)
	go func() {
		defer close(chunks)
		for left := e.Size; left > 0; {
			buf, ok := <-free
			if !ok {
				readErr <- errors.New("send stopped")
				return
			}
			data := buf[proto.Headroom : proto.Headroom+int(min(int64(chunkSize), left))]
			n, err := io.ReadFull(f, data)
			if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				readErr <- err
				return
			}
			if n < len(data) {
				clear(data[n:]) // the file shrank: pad to its size
			}
			chunks <- buf[:proto.Headroom+len(data)]
			left -= int64(len(data))
		}
		readErr <- nil
	}()
	for buf := range chunks {
		if err := proto.WriteFrame(w, proto.TypeData, buf); err != nil {
			go func() {
				for range chunks {
				}
			}()
			close(free) // unblock the reader, which then fails
			return err
		}
		free <- buf[:cap(buf)]
	}
	if err := <-readErr; err != nil {
		return err
	}
	return proto.WriteMsg(w, proto.TypeEOF, nil)
}

// entry describes fi; Size is set for regular files only.
func entry(fi fs.FileInfo, rel string) proto.Entry {
	e := proto.Entry{Path: rel, Mode: uint32(fi.Mode().Perm()), Mtime: fi.ModTime().Unix()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.Mode = st.Mode & 0o7777
		e.UID, e.GID = int(st.Uid), int(st.Gid)
	}
	if fi.Mode().IsRegular() {
		e.Size = fi.Size()
	}
	return e
}

func (s *Server) stat(_ context.Context, st io.ReadWriter, req *proto.Request) error {
	r := req.Stat
	if r == nil {
		return errMissing(proto.MethodStat)
	}
	return sendResult(st, pathInfo(s.abs(r.Path), r.FollowLinks))
}

func pathInfo(p string, follow bool) proto.PathInfo {
	fi, err := statPath(p, follow)
	if errors.Is(err, fs.ErrNotExist) {
		return proto.PathInfo{}
	}
	if err != nil {
		return proto.PathInfo{Error: err.Error()}
	}
	info := proto.PathInfo{
		Exists:    true,
		IsDir:     fi.IsDir(),
		IsFile:    fi.Mode().IsRegular(),
		IsSymlink: fi.Mode()&fs.ModeSymlink != 0,
		Mode:      uint32(fi.Mode().Perm()),
		Size:      fi.Size(),
	}
	if info.IsSymlink {
		info.LinkTarget, _ = os.Readlink(p)
	}
	return info
}
