package logs

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func collect(t *testing.T, path string, n int) []string {
	t.Helper()
	var got []string
	if err := Stream(context.Background(), path, n, false, func(l string) error { got = append(got, l); return nil }); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "app.log")
	os.WriteFile(p, []byte("a\nb\r\nc\nd\n"), 0o644)
	cases := []struct {
		n    int
		want []string
	}{{1, []string{"d"}}, {2, []string{"c", "d"}}, {10, []string{"a", "b", "c", "d"}}, {0, nil}}
	for _, c := range cases {
		if got := collect(t, p, c.n); !reflect.DeepEqual(got, c.want) {
			t.Errorf("tail %d = %q, want %q", c.n, got, c.want)
		}
	}
	os.WriteFile(p, []byte("x\ny"), 0o644) // no final newline
	if got := collect(t, p, 1); !reflect.DeepEqual(got, []string{"y"}) {
		t.Errorf("partial last line: %q", got)
	}
	big := strings.Repeat("line\n", 50000)
	os.WriteFile(p, []byte(big+"last\n"), 0o644)
	if got := collect(t, p, 2); !reflect.DeepEqual(got, []string{"line", "last"}) {
		t.Errorf("large file: %q", got)
	}
}

func TestFollow(t *testing.T) {
	p := filepath.Join(t.TempDir(), "app.log")
	os.WriteFile(p, []byte("old\n"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lines := make(chan string, 10)
	go Stream(ctx, p, 1, true, func(l string) error { lines <- l; return nil })
	if l := <-lines; l != "old" {
		t.Fatalf("first = %q", l)
	}
	f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("new par")
	time.Sleep(120 * time.Millisecond)
	f.WriteString("tial\n")
	f.Close()
	select {
	case l := <-lines:
		if l != "new partial" {
			t.Fatalf("followed = %q", l)
		}
	case <-ctx.Done():
		t.Fatal("no followed line")
	}
}

func TestMissingFile(t *testing.T) {
	err := Stream(context.Background(), "/nonexistent/x", 1, false, func(string) error { return nil })
	if !os.IsNotExist(err) {
		t.Fatalf("err = %v", err)
	}
}
