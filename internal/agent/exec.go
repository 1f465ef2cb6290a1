package agent

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/yamux"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

// Exec is a command running in the guest. Read its output (stdout and
// stderr merged, or the TTY) from Output until EOF, then Wait for its exit
// code. Close ends it early: the guest kills the command.
type Exec struct {
	st     *yamux.Stream
	Output io.Reader

	wmu sync.Mutex // serializes frames to the guest

	done chan struct{}
	exit proto.Exit
	err  error
}

// Exec starts a command in the guest.
func (c *Client) Exec(ctx context.Context, req proto.ExecRequest) (*Exec, error) {
	st, err := c.open(ctx, proto.Request{Method: proto.MethodExec, Exec: &req})
	if err != nil {
		return nil, err
	}
	_ = st.SetDeadline(timeZero) // an exec lives as long as its caller wants
	pr, pw := io.Pipe()
	e := &Exec{st: st, Output: pr, done: make(chan struct{})}
	go e.readLoop(pw)
	return e, nil
}

func (e *Exec) readLoop(pw *io.PipeWriter) {
	defer close(e.done)
	buf := make([]byte, 64*1024)
	for {
		typ, payload, err := proto.ReadMsg(e.st, buf)
		if err != nil {
			e.err = fmt.Errorf("agent: exec: stream ended before the exit status: %w", err)
			pw.CloseWithError(e.err)
			return
		}
		switch typ {
		case proto.TypeData:
			if _, err := pw.Write(payload); err != nil {
				// Nobody reads the output any more: end the command.
				e.err = err
				e.st.Close()
				return
			}
		case proto.TypeExit, proto.TypeError:
			e.err = proto.DecodeFrame(typ, payload, proto.TypeExit, &e.exit)
			pw.Close()
			e.st.Close()
			return
		}
	}
}

// Write sends stdin.
func (e *Exec) Write(p []byte) (int, error) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	for off := 0; off < len(p); off += 32 * 1024 {
		end := min(off+32*1024, len(p))
		if err := proto.WriteMsg(e.st, proto.TypeData, p[off:end]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// CloseStdin closes the command's stdin.
func (e *Exec) CloseStdin() error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	return proto.WriteMsg(e.st, proto.TypeEOF, nil)
}

// Resize changes the TTY's window size.
func (e *Exec) Resize(rows, cols uint16) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	return proto.WriteJSON(e.st, proto.TypeResize, proto.Resize{Rows: rows, Cols: cols})
}

// Wait returns the command's exit code once it ended (and its output was
// delivered), or an error if the session broke first.
func (e *Exec) Wait(ctx context.Context) (int, error) {
	select {
	case <-e.done:
	case <-ctx.Done():
		e.Close()
		<-e.done
		return -1, ctx.Err()
	}
	if e.err != nil {
		return -1, e.err
	}
	if e.exit.Error != "" {
		return e.exit.Code, &ExecError{Code: e.exit.Code, Message: e.exit.Error}
	}
	return e.exit.Code, nil
}

// Close ends the exec; a command still running is killed by the guest.
func (e *Exec) Close() error { return e.st.Close() }

// ExecError is a command that could not start (code 126 or 127).
type ExecError struct {
	Code    int
	Message string
}

func (e *ExecError) Error() string { return e.Message }
