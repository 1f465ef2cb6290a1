// Package logs reads log files the way `tail -n N [-f]` does: the last N
// lines, then (when following) each line appended later, until the caller's
// context ends. Writers (QEMU, the daemon) only append.
package logs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"time"
)

// pollInterval is how often a followed file is checked for new data.
const pollInterval = 50 * time.Millisecond

// Stream sends the last n lines of path to fn, then, if follow is set,
// every line appended afterwards until ctx ends. Lines are given without
// their trailing "\n" (and "\r"). It returns os.ErrNotExist (wrapped) when
// the file does not exist.
func Stream(ctx context.Context, path string, n int, follow bool, fn func(line string) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	offset, err := lastLinesOffset(f, n)
	if err != nil {
		return err
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return err
	}
	r := bufio.NewReaderSize(f, 64*1024)
	var partial []byte
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			full := append(partial, line...)
			partial = nil
			if err := fn(string(trimEOL(full))); err != nil {
				return err
			}
			continue
		}
		partial = append(partial, line...)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if !follow {
			if len(partial) > 0 {
				return fn(string(trimEOL(partial)))
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(pollInterval):
		}
		if truncated(f) {
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			partial = nil
		}
		r.Reset(f)
	}
}

func trimEOL(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

// truncated reports whether the file is now shorter than our position.
func truncated(f *os.File) bool {
	pos, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Size() < pos
}

// lastLinesOffset returns the offset where the last n lines of f begin.
func lastLinesOffset(f *os.File, n int) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	if n <= 0 {
		return size, nil
	}
	const chunk = 64 * 1024
	buf := make([]byte, chunk)
	pos := size
	newlines := 0
	// A final line without "\n" counts as a line; a trailing "\n" does not
	// start one.
	skipLast := true
	for pos > 0 {
		readSize := int64(chunk)
		if pos < readSize {
			readSize = pos
		}
		pos -= readSize
		if _, err := f.ReadAt(buf[:readSize], pos); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := readSize - 1; i >= 0; i-- {
			if buf[i] != '\n' {
				skipLast = false
				continue
			}
			if skipLast && pos+i == size-1 {
				continue
			}
			newlines++
			if newlines == n {
				return pos + i + 1, nil
			}
		}
	}
	return 0, nil
}
