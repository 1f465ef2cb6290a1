package proto

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"io"
	"testing"
)

func TestBulkRoundTripSkipsJunk(t *testing.T) {
	data := make([]byte, 3*BulkChunk+123)
	rand.Read(data)
	token := bytes.Repeat([]byte{7}, TokenLen)
	var wire bytes.Buffer
	wire.WriteString("leftover bytes of an aborted transfer")
	bw, err := NewBulkWriter(&wire, token)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bw.Write(data); err != nil {
		t.Fatal(err)
	}
	bw.Close()
	wire.WriteString("next")

	r := bufio.NewReader(&wire)
	br, err := NewBulkReader(r, token)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(br)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes (%v), want %d", len(got), err, len(data))
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "next" {
		t.Fatalf("the reader went past the transfer's end: %q", rest)
	}
}

func TestBulkTruncatedTransferIsAnError(t *testing.T) {
	token := bytes.Repeat([]byte{9}, TokenLen)
	var wire bytes.Buffer
	bw, _ := NewBulkWriter(&wire, token)
	bw.Write([]byte("abcdef"))
	trunc := wire.Bytes()[:wire.Len()-2] // no end, and the last chunk cut
	br, err := NewBulkReader(bufio.NewReader(bytes.NewReader(trunc)), token)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(br); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated transfer: err %v, want io.ErrUnexpectedEOF", err)
	}
}
