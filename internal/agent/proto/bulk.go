package proto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The bulk channel is a second port used for file contents, outside the
// session: under emulation every byte that goes through yamux and the
// frame layer costs guest CPU several times over, so cp moves its data
// here, in large unframed chunks, straight between the port and the file.
//
// One transfer at a time uses it. A transfer is a 16-byte token (named in
// the call's request, on the session), then chunks, each a 4-byte
// big-endian length and that many bytes, then a zero length. A reader
// first skips everything up to the token, so bytes left by an aborted
// transfer cannot be mistaken for data.

// TokenLen is the length of a bulk transfer's token.
const TokenLen = 16

// BulkChunk is the largest chunk senders write.
const BulkChunk = 1 << 20

// Bulk names a bulk transfer in a request.
type Bulk struct {
	Token []byte `json:"token"`
}

// ErrNoBulk is what a guest without a bulk port answers (as an error
// frame with this message); the host then uses the session instead.
const ErrNoBulk = "bulk channel unavailable"

// BulkWriter writes one transfer: NewBulkWriter sends the token, Write
// sends chunks, Close sends the end.
type BulkWriter struct {
	w io.Writer
}

// NewBulkWriter starts a transfer on w.
func NewBulkWriter(w io.Writer, token []byte) (*BulkWriter, error) {
	if _, err := w.Write(token); err != nil {
		return nil, err
	}
	return &BulkWriter{w: w}, nil
}

// Write sends p as chunks.
func (b *BulkWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), BulkChunk)
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], uint32(n))
		if _, err := b.w.Write(hdr[:]); err != nil {
			return written, err
		}
		if _, err := b.w.Write(p[:n]); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// Close ends the transfer.
func (b *BulkWriter) Close() error {
	_, err := b.w.Write([]byte{0, 0, 0, 0})
	return err
}

// BulkReader reads one transfer's data up to its end (then io.EOF).
type BulkReader struct {
	r    *bufio.Reader
	left int
	done bool
}

// NewBulkReader skips r up to token and returns a reader of the data.
func NewBulkReader(r *bufio.Reader, token []byte) (*BulkReader, error) {
	if len(token) != TokenLen {
		return nil, errors.New("proto: bad bulk token")
	}
	window := make([]byte, 0, TokenLen)
	for {
		c, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		window = append(window, c)
		if len(window) > TokenLen {
			window = window[1:]
		}
		if len(window) == TokenLen && bytes.Equal(window, token) {
			return &BulkReader{r: r}, nil
		}
	}
}

func (b *BulkReader) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	if b.left == 0 {
		var hdr [4]byte
		if _, err := io.ReadFull(b.r, hdr[:]); err != nil {
			return 0, unexpected(err)
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 {
			b.done = true
			return 0, io.EOF
		}
		if n > BulkChunk {
			return 0, fmt.Errorf("proto: bulk chunk of %d bytes", n)
		}
		b.left = int(n)
	}
	n, err := b.r.Read(p[:min(len(p), b.left)])
	b.left -= n
	return n, unexpected(err)
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
