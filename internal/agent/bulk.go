package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

// bulkConn is the host end of the bulk channel. A transfer holds mu.
type bulkConn struct {
	dialer Dialer

	mu   sync.Mutex // held for a whole transfer; guards conn and r
	conn net.Conn
	r    *bufio.Reader
}

// acquire locks the channel, connecting if needed. release unlocks it;
// after a failed transfer, drop the connection with reset first.
func (b *bulkConn) acquire(ctx context.Context) error {
	b.mu.Lock()
	if b.conn != nil {
		return nil
	}
	conn, err := b.dialer.Dial(ctx)
	if err != nil {
		b.mu.Unlock()
		return fmt.Errorf("agent: bulk channel: %w", err)
	}
	b.conn, b.r = conn, bufio.NewReaderSize(conn, proto.BulkChunk)
	return nil
}

func (b *bulkConn) release() { b.mu.Unlock() }

// resetLocked drops the connection (the caller holds mu).
func (b *bulkConn) resetLocked() {
	if b.conn != nil {
		b.conn.Close()
		b.conn, b.r = nil, nil
	}
}

func (b *bulkConn) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.resetLocked()
}

func newToken() []byte {
	t := make([]byte, proto.TokenLen)
	_, _ = rand.Read(t)
	return t
}

// errNoBulk reports whether err is the guest saying it has no bulk port.
func errNoBulk(err error) bool {
	var re *proto.RemoteError
	return errors.As(err, &re) && re.Message == proto.ErrNoBulk
}

// copyToBulk sends a file's contents over the bulk channel. ok is false
// when the guest has no bulk port (nothing was sent; use the session).
func (c *Client) copyToBulk(ctx context.Context, req proto.CopyToRequest, r io.Reader) (n int64, ok bool, err error) {
	b := c.bulk
	if err := b.acquire(ctx); err != nil {
		return 0, false, err
	}
	defer b.release()
	token := newToken()
	st, err := c.open(ctx, proto.Request{Method: proto.MethodCopyTo, CopyTo: &req, Bulk: &proto.Bulk{Token: token}})
	if err != nil {
		return 0, true, err
	}
	defer st.Close()
	_ = st.SetDeadline(timeZero)
	stop := context.AfterFunc(ctx, func() { st.Close(); b.conn.SetDeadline(time.Now()) })
	defer stop()
	if err := proto.ReadJSON(st, proto.TypeResult, nil); err != nil { // the guest is ready
		if errNoBulk(err) {
			return 0, false, nil
		}
		return 0, true, fmt.Errorf("agent: cp_to: %w", err)
	}
	if err := sendBulk(b.conn, token, r); err != nil {
		b.resetLocked()
		return 0, true, fmt.Errorf("agent: cp_to: bulk: %w", err)
	}
	var res proto.CopyResult
	if err := proto.ReadJSON(st, proto.TypeResult, &res); err != nil {
		return 0, true, fmt.Errorf("agent: cp_to: %w", err)
	}
	return res.BytesWritten, true, nil
}

func sendBulk(w io.Writer, token []byte, r io.Reader) error {
	bw, err := proto.NewBulkWriter(w, token)
	if err != nil {
		return err
	}
	buf := make([]byte, proto.BulkChunk)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if _, err := bw.Write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return bw.Close()
		}
		if rerr != nil {
			return rerr
		}
	}
}

// copyFromBulk is CopyFrom with file contents on the bulk channel.
func (c *Client) copyFromBulk(ctx context.Context, req proto.CopyFromRequest, fn func(proto.Entry, io.Reader) error) (ok bool, err error) {
	b := c.bulk
	if err := b.acquire(ctx); err != nil {
		return false, err
	}
	defer b.release()
	token := newToken()
	st, err := c.open(ctx, proto.Request{Method: proto.MethodCopyFrom, CopyFrom: &req, Bulk: &proto.Bulk{Token: token}})
	if err != nil {
		return true, err
	}
	defer st.Close()
	_ = st.SetDeadline(timeZero)
	stop := context.AfterFunc(ctx, func() { st.Close(); b.conn.SetDeadline(time.Now()) })
	defer stop()
	for first := true; ; first = false {
		typ, payload, err := proto.ReadMsg(st, nil)
		if err != nil {
			return true, fmt.Errorf("agent: cp_from: %w", err)
		}
		if typ == proto.TypeResult {
			return true, nil
		}
		var e proto.Entry
		if err := proto.DecodeFrame(typ, payload, proto.TypeHeader, &e); err != nil {
			if first && errNoBulk(err) {
				return false, nil
			}
			return true, fmt.Errorf("agent: cp_from: %w", err)
		}
		if e.IsDir || e.IsSymlink {
			if err := fn(e, eofReader{}); err != nil {
				return true, err
			}
			continue
		}
		if err := c.bulkEntry(b, token, e, st, fn); err != nil {
			return true, err
		}
	}
}

// bulkEntry hands one file's bulk contents to fn, then reads the EOF frame
// that ends the file on the stream.
func (c *Client) bulkEntry(b *bulkConn, token []byte, e proto.Entry, st io.Reader, fn func(proto.Entry, io.Reader) error) error {
	br, err := proto.NewBulkReader(b.r, token)
	if err != nil {
		b.resetLocked()
		return fmt.Errorf("agent: cp_from: bulk: %w", err)
	}
	ferr := fn(e, br)
	if _, err := io.Copy(io.Discard, br); err != nil {
		b.resetLocked()
		return fmt.Errorf("agent: cp_from: bulk: %w", err)
	}
	if ferr != nil {
		return ferr
	}
	return proto.ReadJSON(st, proto.TypeEOF, nil)
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }
