package agentd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

// bulkPort is the guest end of the bulk channel (proto/bulk.go): file
// contents of cp, unframed, between the port and the file. One transfer
// at a time.
type bulkPort struct {
	mu sync.Mutex // held for a whole transfer
	f  *os.File
	r  *bufio.Reader
}

func newBulkPort(f *os.File) *bulkPort {
	b := &bulkPort{f: f}
	b.r = bufio.NewReaderSize(eofWait{f}, proto.BulkChunk)
	return b
}

// eofWait reads f, waiting through EOF: a virtio-serial port reads as EOF
// while its host side is not connected.
type eofWait struct{ f *os.File }

func (e eofWait) Read(p []byte) (int, error) {
	for {
		n, err := e.f.Read(p)
		if n > 0 || !errors.Is(err, io.EOF) {
			return n, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// abortOn interrupts the port's blocking reads and writes when ctx ends.
func (b *bulkPort) abortOn(ctx context.Context) func() {
	stop := context.AfterFunc(ctx, func() { _ = b.f.SetDeadline(time.Now()) })
	return func() {
		stop()
		_ = b.f.SetDeadline(time.Time{})
	}
}

// receiveBulk is cp_to over the bulk channel: tell the host to go, then
// write the transfer to a temp file (reading and writing overlap) that is
// finished like receiveFile's.
func (s *Server) receiveBulk(ctx context.Context, st io.Writer, p string, r *proto.CopyToRequest, bulk *proto.Bulk) (int64, error) {
	b := s.bulk
	b.mu.Lock()
	defer b.mu.Unlock()
	defer b.abortOn(ctx)()
	if err := sendResult(st, nil); err != nil { // ready: the host may send
		return 0, err
	}
	br, err := proto.NewBulkReader(b.r, bulk.Token)
	if err != nil {
		return 0, fmt.Errorf("cp_to: bulk: %w", err)
	}
	var f *os.File
	err = os.MkdirAll(filepath.Dir(p), 0o755)
	if err == nil {
		f, err = os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".hypeman-*")
	}
	var w *pipelinedWriter
	if err == nil {
		w = newPipelinedWriter(f)
	}
	var bufs [3][]byte
	for i := 0; ; i = (i + 1) % len(bufs) {
		if w != nil {
			w.reuse(i)
		}
		if bufs[i] == nil {
			bufs[i] = make([]byte, proto.BulkChunk)
		}
		n, rerr := fill(br, bufs[i])
		if n > 0 && w != nil {
			w.write(i, bufs[i][:n])
		} else if w != nil {
			w.done[i] <- struct{}{} // buffer i stays free
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if err == nil {
				err = fmt.Errorf("cp_to: bulk: %w", rerr)
			}
			break
		}
	}
	var n int64
	if w != nil {
		var werr error
		if n, werr = w.close(); err == nil {
			err = werr
		}
	}
	if err == nil {
		err = finishFile(f, p, r)
	}
	if err != nil {
		_, _ = io.Copy(io.Discard, br) // leave the channel at a transfer boundary
		if f != nil {
			f.Close()
			_ = os.Remove(f.Name())
		}
		return 0, err
	}
	return n, nil
}

// fill reads into buf until it is full or r ends; io.EOF means the
// transfer ended (possibly with n > 0).
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		k, err := r.Read(buf[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// bulkOut is the writer sendTree is given for a bulk cp_from: headers go
// on the stream, file contents on the bulk channel.
type bulkOut struct {
	io.Writer // the stream
	port      *bulkPort
	token     []byte
}

// sendFileBulk sends a file's header on the stream, its content on the
// bulk channel, then an EOF frame on the stream.
func sendFileBulk(out *bulkOut, abs, rel string) error {
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
	if err := proto.WriteJSON(out.Writer, proto.TypeHeader, e); err != nil {
		return err
	}
	bw, err := proto.NewBulkWriter(out.port.f, out.token)
	if err != nil {
		return err
	}
	buf := make([]byte, proto.BulkChunk)
	for left := e.Size; left > 0; {
		data := buf[:min(int64(len(buf)), left)]
		n, err := io.ReadFull(f, data)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return err
		}
		if n < len(data) {
			clear(data[n:]) // the file shrank: pad to its size
		}
		if _, err := bw.Write(data); err != nil {
			return err
		}
		left -= int64(len(data))
	}
	if err := bw.Close(); err != nil {
		return err
	}
	return proto.WriteMsg(out.Writer, proto.TypeEOF, nil)
}
