package agent

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

var timeZero time.Time

// CopyTo writes one file (content from r), directory or symlink in the
// guest and returns the bytes written.
func (c *Client) CopyTo(ctx context.Context, req proto.CopyToRequest, r io.Reader) (int64, error) {
	if c.bulk != nil && !req.IsDir && req.Symlink == "" && r != nil {
		if n, ok, err := c.copyToBulk(ctx, req, r); ok {
			return n, err
		}
	}
	st, err := c.open(ctx, proto.Request{Method: proto.MethodCopyTo, CopyTo: &req})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	_ = st.SetDeadline(timeZero)
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	if !req.IsDir && req.Symlink == "" && r != nil {
		buf := make([]byte, proto.Headroom+256*1024)
		for {
			n, rerr := io.ReadFull(r, buf[proto.Headroom:])
			if n > 0 {
				if err := proto.WriteFrame(st, proto.TypeData, buf[:proto.Headroom+n]); err != nil {
					return 0, fmt.Errorf("agent: cp_to: %w", err)
				}
			}
			if rerr == io.ErrUnexpectedEOF {
				rerr = io.EOF
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return 0, rerr
			}
		}
	}
	if err := proto.WriteMsg(st, proto.TypeEOF, nil); err != nil {
		return 0, fmt.Errorf("agent: cp_to: %w", err)
	}
	var res proto.CopyResult
	if err := proto.ReadJSON(st, proto.TypeResult, &res); err != nil {
		return 0, fmt.Errorf("agent: cp_to: %w", err)
	}
	return res.BytesWritten, nil
}

// CopyFrom reads a file or a directory tree from the guest. fn is called
// for each entry in order, with the content of regular files (read it
// before returning; it is empty for other entries).
func (c *Client) CopyFrom(ctx context.Context, req proto.CopyFromRequest, fn func(proto.Entry, io.Reader) error) error {
	if c.bulk != nil {
		if ok, err := c.copyFromBulk(ctx, req, fn); ok {
			return err
		}
	}
	st, err := c.open(ctx, proto.Request{Method: proto.MethodCopyFrom, CopyFrom: &req})
	if err != nil {
		return err
	}
	defer st.Close()
	_ = st.SetDeadline(timeZero)
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	buf := make([]byte, 64*1024)
	for {
		typ, payload, err := proto.ReadMsg(st, buf)
		if err != nil {
			return fmt.Errorf("agent: cp_from: %w", err)
		}
		if typ == proto.TypeResult {
			return nil
		}
		var e proto.Entry
		if err := proto.DecodeFrame(typ, payload, proto.TypeHeader, &e); err != nil {
			return fmt.Errorf("agent: cp_from: %w", err)
		}
		body := &fileReader{st: st}
		if e.IsDir || e.IsSymlink {
			body.eof = true
		}
		if err := fn(e, body); err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, body); err != nil {
			return fmt.Errorf("agent: cp_from: %w", err)
		}
	}
}

// fileReader reads one file's Data frames up to its EOF frame.
type fileReader struct {
	st   io.Reader
	buf  []byte
	eof  bool
	left []byte
}

func (f *fileReader) Read(p []byte) (int, error) {
	for len(f.left) == 0 {
		if f.eof {
			return 0, io.EOF
		}
		typ, payload, err := proto.ReadMsg(f.st, f.buf)
		if err != nil {
			return 0, err
		}
		f.buf = payload[:cap(payload)]
		switch typ {
		case proto.TypeData:
			f.left = payload
		case proto.TypeEOF:
			f.eof = true
		default:
			return 0, proto.DecodeFrame(typ, payload, proto.TypeData, nil)
		}
	}
	n := copy(p, f.left)
	f.left = f.left[n:]
	return n, nil
}

// BenchUpload sends n bytes to the guest through the agent and returns
// how long it took until the guest had read them all.
func (c *Client) BenchUpload(ctx context.Context, n int64) (time.Duration, error) {
	st, err := c.open(ctx, proto.Request{Method: proto.MethodBench, Bench: &proto.BenchRequest{Upload: true, Bytes: n}})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	start := time.Now()
	chunk := make([]byte, 256*1024)
	for sent := int64(0); sent < n; {
		k := min(int64(len(chunk)), n-sent)
		if err := proto.WriteMsg(st, proto.TypeData, chunk[:k]); err != nil {
			return 0, err
		}
		sent += k
	}
	if err := proto.ReadJSON(st, proto.TypeResult, nil); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// BenchDownload has the guest send n bytes and returns how long it took.
func (c *Client) BenchDownload(ctx context.Context, n int64) (time.Duration, error) {
	st, err := c.open(ctx, proto.Request{Method: proto.MethodBench, Bench: &proto.BenchRequest{Bytes: n}})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	start := time.Now()
	got, err := io.Copy(io.Discard, &fileReader{st: st})
	if err != nil {
		return 0, err
	}
	if got != n {
		return 0, fmt.Errorf("agent: bench: got %d bytes, want %d", got, n)
	}
	return time.Since(start), nil
}
