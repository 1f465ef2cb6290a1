// Package proto is the wire protocol between hypeman and the guest agent,
// shared by both sides. It has three layers:
//
//  1. The port: one byte stream (a virtio-serial port here; vsock where the
//     host has it). It can break at any time: the daemon restarts, or the
//     VM is snapshotted and restored into a new VMM process.
//  2. The session: the host opens it by sending a Hello frame with a fresh
//     nonce until the guest answers HelloAck with the same nonce; everything
//     else read while waiting is discarded, so stale bytes from a previous
//     connection cannot confuse either side. Then both run a yamux session
//     (the guest as server) over the port: many concurrent streams, each
//     with flow control. When the session breaks, the guest drops all its
//     streams (ending their processes) and waits for the next Hello.
//  3. A stream: one call. Its frames are Msg: a type byte, a length, and a
//     payload. The client's first frame is a Header naming the method.
//
// See session.go for layer 2 and the method constants below for layer 3.
package proto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version both sides announce in Hello.
const Version = 1

// Frame types of a stream.
const (
	// TypeHeader: JSON. The client's first frame (a Request); for cp_from,
	// the header of each entry (an Entry).
	TypeHeader byte = 'H'
	// TypeData: raw bytes (stdin, output, file content).
	TypeData byte = 'D'
	// TypeEOF: no more data (stdin closed; end of a file or of a listing).
	TypeEOF byte = 'E'
	// TypeResize: JSON Resize for a TTY.
	TypeResize byte = 'R'
	// TypeExit: JSON Exit, the last frame of an exec.
	TypeExit byte = 'X'
	// TypeResult: JSON reply of a call (its type depends on the method).
	TypeResult byte = 'S'
	// TypeError: JSON Error; the call failed.
	TypeError byte = '!'
)

// MaxPayload bounds one frame's payload.
const MaxPayload = 1 << 20

// Methods.
const (
	MethodPing        = "ping"
	MethodExec        = "exec"
	MethodCopyTo      = "cp_to"
	MethodCopyFrom    = "cp_from"
	MethodStat        = "stat"
	MethodShutdown    = "shutdown"
	MethodSetNetwork  = "set_network"
	MethodSetHostname = "set_hostname"
	MethodSetTime     = "set_time"
	MethodAddEntropy  = "add_entropy"
	// MethodRefresh applies Network, Hostname, Entropy and TimeUnixNano
	// (each when set) in one call.
	MethodRefresh = "refresh"
	// MethodBench streams raw bytes one way or the other, for benchmarks.
	MethodBench = "bench"
	// MethodDetach ends the session once answered: the agent waits for
	// the next handshake on the same port, as after a restore. The host
	// calls it right before saving a VM whose state it will resume.
	MethodDetach = "detach"
)

// WriteMsg writes one frame.
func WriteMsg(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("proto: frame of %d bytes exceeds %d", len(payload), MaxPayload)
	}
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if len(payload) == 0 {
		_, err := w.Write(hdr[:])
		return err
	}
	buf := make([]byte, 0, 5+len(payload))
	buf = append(append(buf, hdr[:]...), payload...)
	_, err := w.Write(buf)
	return err
}

// WriteJSON writes one frame whose payload is v as JSON.
func WriteJSON(w io.Writer, typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return WriteMsg(w, typ, b)
}

// Headroom is the space WriteFrame needs in front of a payload.
const Headroom = 5

// WriteFrame writes one frame whose payload is buf[Headroom:]: the header
// is put in buf[:Headroom], so the frame goes out in one write with no
// copy. Bulk senders read their data straight into buf[Headroom:].
func WriteFrame(w io.Writer, typ byte, buf []byte) error {
	n := len(buf) - Headroom
	if n < 0 || n > MaxPayload {
		return fmt.Errorf("proto: bad frame buffer of %d bytes", len(buf))
	}
	buf[0] = typ
	binary.BigEndian.PutUint32(buf[1:Headroom], uint32(n))
	_, err := w.Write(buf)
	return err
}

// ReadMsg reads one frame. buf is reused when large enough.
func ReadMsg(r io.Reader, buf []byte) (typ byte, payload []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxPayload {
		return 0, nil, fmt.Errorf("proto: frame of %d bytes exceeds %d", n, MaxPayload)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, err
	}
	return hdr[0], buf, nil
}

// ReadJSON reads one frame that must be of type want and decodes it into v.
// A TypeError frame becomes a *RemoteError.
func ReadJSON(r io.Reader, want byte, v any) error {
	typ, payload, err := ReadMsg(r, nil)
	if err != nil {
		return err
	}
	return DecodeFrame(typ, payload, want, v)
}

// DecodeFrame decodes a frame already read: it must be of type want.
func DecodeFrame(typ byte, payload []byte, want byte, v any) error {
	if typ == TypeError {
		var e Error
		if err := json.Unmarshal(payload, &e); err != nil {
			return fmt.Errorf("proto: bad error frame: %w", err)
		}
		return &RemoteError{Message: e.Message, NotFound: e.NotFound}
	}
	if typ != want {
		return fmt.Errorf("proto: got frame %q, want %q", typ, want)
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(payload, v)
}

// RemoteError is an error the guest reported.
type RemoteError struct {
	Message  string
	NotFound bool
}

func (e *RemoteError) Error() string { return "guest: " + e.Message }

// ErrNotFoundInGuest matches (with errors.Is) remote errors about a missing path.
var ErrNotFoundInGuest = errors.New("not found in guest")

func (e *RemoteError) Is(target error) bool { return target == ErrNotFoundInGuest && e.NotFound }

// Request is the first frame of every stream. Method selects which of the
// optional parts is meaningful.
type Request struct {
	Method   string           `json:"method"`
	Exec     *ExecRequest     `json:"exec,omitempty"`
	CopyTo   *CopyToRequest   `json:"cp_to,omitempty"`
	CopyFrom *CopyFromRequest `json:"cp_from,omitempty"`
	Stat     *StatRequest     `json:"stat,omitempty"`
	Network  *NetworkRequest  `json:"network,omitempty"`
	Hostname string           `json:"hostname,omitempty"`
	// TimeUnixNano is the host's clock for set_time.
	TimeUnixNano int64 `json:"time_unix_nano,omitempty"`
	// Entropy is random bytes for add_entropy.
	Entropy []byte        `json:"entropy,omitempty"`
	Bench   *BenchRequest `json:"bench,omitempty"`
	// Bulk, on cp_to and cp_from, moves file contents over the bulk
	// channel (bulk.go) instead of Data frames.
	Bulk *Bulk `json:"bulk,omitempty"`
}

// ExecRequest starts a command. Output (stdout and stderr merged, or the
// TTY) comes back as Data frames, then one Exit frame. The client sends
// stdin as Data, EOF to close stdin, Resize for a TTY. If the stream ends
// before Exit, the guest kills the command's process group.
type ExecRequest struct {
	Command []string          `json:"command"`
	TTY     bool              `json:"tty,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Cwd     string            `json:"cwd,omitempty"`
	// TimeoutSeconds kills the command (exit code 124) when it runs longer.
	TimeoutSeconds int    `json:"timeout_seconds,omitempty"`
	Rows           uint16 `json:"rows,omitempty"`
	Cols           uint16 `json:"cols,omitempty"`
}

// Resize changes a TTY's window size.
type Resize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// Exit ends an exec.
type Exit struct {
	Code int `json:"exit_code"`
	// Error explains a command that could not start (Code 126 or 127).
	Error string `json:"error,omitempty"`
}

// CopyToRequest writes one file or makes one directory in the guest. For a
// file, the client then sends Data frames and an EOF; the guest replies
// with a Result (CopyResult).
type CopyToRequest struct {
	Path  string `json:"path"`
	IsDir bool   `json:"is_dir,omitempty"`
	Mode  uint32 `json:"mode"`
	UID   *int   `json:"uid,omitempty"`
	GID   *int   `json:"gid,omitempty"`
	Mtime int64  `json:"mtime,omitempty"`
	// Symlink, when set, makes a symbolic link to this target instead.
	Symlink string `json:"symlink,omitempty"`
}

// CopyResult answers a CopyTo.
type CopyResult struct {
	BytesWritten int64 `json:"bytes_written"`
}

// CopyFromRequest reads a file or a directory tree from the guest. The
// guest sends, per entry, a Header (Entry), then for regular files Data
// frames and an EOF; after the last entry a Result (empty object).
type CopyFromRequest struct {
	Path        string `json:"path"`
	FollowLinks bool   `json:"follow_links,omitempty"`
}

// Entry describes one file of a CopyFrom.
type Entry struct {
	// Path is relative to the requested path's parent, with "/" separators:
	// copying /a/b yields "b", "b/c", ...
	Path       string `json:"path"`
	Mode       uint32 `json:"mode"`
	IsDir      bool   `json:"is_dir,omitempty"`
	IsSymlink  bool   `json:"is_symlink,omitempty"`
	LinkTarget string `json:"link_target,omitempty"`
	Size       int64  `json:"size"`
	Mtime      int64  `json:"mtime"`
	UID        int    `json:"uid"`
	GID        int    `json:"gid"`
}

// StatRequest asks about a path.
type StatRequest struct {
	Path        string `json:"path"`
	FollowLinks bool   `json:"follow_links,omitempty"`
}

// RefreshResult answers a Refresh: how long each part took in the guest
// (microseconds, by part: network, hostname, entropy, clock), for the
// host's logs.
type RefreshResult struct {
	Micros map[string]int64 `json:"micros,omitempty"`
}

// PathInfo answers a Stat.
type PathInfo struct {
	Exists     bool   `json:"exists"`
	IsDir      bool   `json:"is_dir,omitempty"`
	IsFile     bool   `json:"is_file,omitempty"`
	IsSymlink  bool   `json:"is_symlink,omitempty"`
	LinkTarget string `json:"link_target,omitempty"`
	Mode       uint32 `json:"mode,omitempty"`
	Size       int64  `json:"size,omitempty"`
	Error      string `json:"error,omitempty"`
}

// NetworkRequest gives an interface a new identity. The interface is the
// one with MAC OldMAC if set, else the first non-loopback interface.
type NetworkRequest struct {
	OldMAC    string `json:"old_mac,omitempty"`
	MAC       string `json:"mac"`
	IP        string `json:"ip"`
	PrefixLen int    `json:"prefix_len"`
	Gateway   string `json:"gateway,omitempty"`
	// FlushNeighbors empties the ARP cache (peers' MACs may have changed).
	FlushNeighbors bool `json:"flush_neighbors,omitempty"`
}

// BenchRequest: with Upload, the client sends Bytes of Data and the guest
// replies with a Result when it has read them all; otherwise the guest
// sends Bytes of Data then an EOF.
type BenchRequest struct {
	Upload bool  `json:"upload"`
	Bytes  int64 `json:"bytes"`
}

// Error is the payload of a TypeError frame.
type Error struct {
	Message  string `json:"message"`
	NotFound bool   `json:"not_found,omitempty"`
}

// Pong answers a Ping.
type Pong struct {
	Version int `json:"version"`
}

// PortBulk is the name of the bulk channel's port.
const PortBulk = "hypeman.bulk"
