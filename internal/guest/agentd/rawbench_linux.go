package agentd

import (
	"encoding/binary"
	"io"
	"os"
	"time"
)

// serveRawBench serves the benchmark port, which only benchmark VMs have:
// the host sends 'U' and an 8-byte big-endian length followed by that many
// bytes, and the guest answers 'K' once it has read them all; or 'D' and a
// length, and the guest sends that many bytes. No framing, no session: the
// raw channel the agent protocol is compared with.
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
