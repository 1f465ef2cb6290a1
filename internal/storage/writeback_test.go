package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteBack(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mem")
	data := make([]byte, 3<<20+123)
	for i := range data {
		data[i] = byte(i)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteBack(context.Background(), p, 1<<20); err != nil {
		t.Fatalf("write back: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := WriteBack(ctx, p, 1<<20); !errors.Is(err, context.Canceled) {
		t.Fatalf("write back after cancel = %v, want context.Canceled", err)
	}
	if err := WriteBack(context.Background(), filepath.Join(t.TempDir(), "missing"), 1<<20); err != nil {
		t.Fatalf("missing file: %v", err)
	}
	got, err := os.ReadFile(p)
	if err != nil || len(got) != len(data) || got[len(got)-1] != data[len(data)-1] {
		t.Fatalf("file changed: %d bytes, %v", len(got), err)
	}
}
