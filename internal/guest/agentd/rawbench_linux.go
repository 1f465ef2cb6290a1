package agentd

import (
	"encoding/binary"
	"io"
	"os"
	"time"
)

// rawBenchFile is where the raw channel's file transfers land: the same
// tmpfs as the benchmark's cp.
const rawBenchFile = "/dev/shm/hypeman-rawbench.bin"

// serveRawBench serves the benchmark port, which only benchmark VMs have:
// the host sends 'U' and an 8-byte big-endian length followed by that many
// bytes, and the guest answers 'K' once it has read them all; or 'D' and a
// length, and the guest sends that many bytes. 'F' is 'U' into a file
// (rawBenchFile) and 'R' is 'D' out of it: the transfer cp makes, with no
// protocol. No framing, no session: the raw channel the agent protocol is
// compared with.
func serveRawBench(port *os.File) {
	defer port.Close()
	buf := make([]byte, 256*1024)
	var hdr [9]byte
	for {
		if _, err := io.ReadFull(port, hdr[:]); err != nil {
			time.Sleep(20 * time.Millisecond) // host not connected yet
			continue
		}
		n := int64(binary.BigEndian.Uint64(hdr[1:]))
		switch hdr[0] {
		case 'U':
			if _, err := io.CopyBuffer(io.Discard, io.LimitReader(port, n), buf); err != nil {
				continue
			}
			_, _ = port.Write([]byte{'K'})
		case 'F':
			if err := rawToFile(port, n, buf); err != nil {
				continue
			}
			_, _ = port.Write([]byte{'K'})
		case 'R':
			_ = rawFromFile(port, n, buf)
		case 'D':
			for sent := int64(0); sent < n; {
				k := min(int64(len(buf)), n-sent)
				w, err := port.Write(buf[:k])
				if err != nil {
					break
				}
				sent += int64(w)
			}
		}
	}
}

func rawToFile(port *os.File, n int64, buf []byte) error {
	f, err := os.Create(rawBenchFile)
	if err != nil {
		_, _ = io.CopyN(io.Discard, port, n)
		return err
	}
	_, err = io.CopyBuffer(plainWriter{f}, io.LimitReader(port, n), buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func rawFromFile(port *os.File, n int64, buf []byte) error {
	f, err := os.Open(rawBenchFile)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.CopyBuffer(plainWriter{port}, io.LimitReader(f, n), buf)
	return err
}

// plainWriter hides ReadFrom, so that the raw transfers are read and write
// calls of buf's size, like cat.
type plainWriter struct{ w io.Writer }

func (p plainWriter) Write(b []byte) (int, error) { return p.w.Write(b) }
