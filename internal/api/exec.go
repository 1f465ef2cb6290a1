package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/gorilla/websocket"

	"github.com/hypeman-vm/hypeman/internal/agent"
	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

// upgrader accepts any Origin: the API authenticates with a bearer token,
// not cookies, so cross-site pages gain nothing.
var upgrader = websocket.Upgrader{
	ReadBufferSize:  32 * 1024,
	WriteBufferSize: 32 * 1024,
	CheckOrigin:     func(*http.Request) bool { return true },
}

// chunkSize bounds the data frames the WebSocket endpoints send.
const chunkSize = 32 * 1024

// writePreUpgradeError answers a WebSocket request that cannot be
// upgraded the way http.Error does (text/plain), with the API's JSON error
// object as the text.
func (s *Server) writePreUpgradeError(w http.ResponseWriter, r *http.Request, err error) {
	status, code, msg := statusOf(err)
	if status == http.StatusInternalServerError {
		s.Log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	b, _ := json.Marshal(errorBody{Code: code, Message: msg})
	http.Error(w, string(b), status)
}

// upgradeToAgent resolves the instance's agent, then upgrades; on failure
// it has answered and returns a nil conn.
func (s *Server) upgradeToAgent(w http.ResponseWriter, r *http.Request) (*websocket.Conn, *agent.Client) {
	client, _, err := s.agent(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.writePreUpgradeError(w, r, err)
		return nil, nil
	}
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return nil, nil // the upgrader has answered
	}
	return conn, client
}

// writeText sends v as one TEXT frame of JSON.
func writeText(conn *websocket.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return conn.WriteMessage(websocket.TextMessage, b)
}

// closeWS ends a WebSocket with a normal close frame.
func closeWS(conn *websocket.Conn) {
	_ = conn.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	conn.Close()
}

// execStart is the first client message of an exec.
type execStart struct {
	Command      []string          `json:"command"`
	TTY          bool              `json:"tty"`
	Env          map[string]string `json:"env"`
	Cwd          string            `json:"cwd"`
	Timeout      int32             `json:"timeout"`
	WaitForAgent int32             `json:"wait_for_agent"`
	Rows         uint32            `json:"rows"`
	Cols         uint32            `json:"cols"`
}

// execControl is a client TEXT frame that is not stdin: a resize, or
// (our extension, sent by hypeman exec) the end of stdin.
type execControl struct {
	Resize *struct {
		Rows uint32 `json:"rows"`
		Cols uint32 `json:"cols"`
	} `json:"resize"`
	StdinEOF bool `json:"stdin_eof"`
}

// serveExec implements GET /instances/{id}/exec (WebSocket): see
// hypeman-api.md 5.3. Frames: client TEXT start message, then BINARY (or
// non-control TEXT) stdin, TEXT resize; server BINARY output, then one
// TEXT {"exitCode":N} and a close.
func (s *Server) serveExec(w http.ResponseWriter, r *http.Request) {
	conn, client := s.upgradeToAgent(w, r)
	if conn == nil {
		return
	}
	defer closeWS(conn)
	start, ok := readExecStart(conn)
	if !ok {
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	code, err := runExec(ctx, conn, client, start)
	if err != nil {
		if errors.Is(err, errClientGone) {
			return
		}
		if code < 0 {
			code = 127
		}
		_ = conn.WriteMessage(websocket.BinaryMessage, []byte("Error: "+guestMessage(err)+"\r\n"))
	}
	_ = conn.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"exitCode":%d}`, code))
}

// readExecStart reads and checks the first frame, answering a bad one.
func readExecStart(conn *websocket.Conn) (execStart, bool) {
	var start execStart
	typ, msg, err := conn.ReadMessage()
	if err != nil {
		return start, false
	}
	if typ != websocket.TextMessage {
		_ = writeText(conn, map[string]string{"error": "first message must be JSON text"})
		return start, false
	}
	if err := json.Unmarshal(msg, &start); err != nil {
		_ = writeText(conn, map[string]string{"error": "invalid JSON: " + err.Error()})
		return start, false
	}
	if len(start.Command) == 0 {
		start.Command = []string{"/bin/sh"}
	}
	return start, true
}

// agentOpenTimeout bounds connecting to the agent for an exec (after
// wait_for_agent, if any).
const agentOpenTimeout = 30 * time.Second

// errClientGone: the client disconnected; nothing more is sent.
var errClientGone = errors.New("client disconnected")

// runExec runs the command, pumping stdin from conn and output to it, and
// returns the exit code. A negative code with an error: no code.
func runExec(ctx context.Context, conn *websocket.Conn, client *agent.Client, start execStart) (int, error) {
	if err := waitForAgent(ctx, client, time.Duration(start.WaitForAgent)*time.Second); err != nil {
		return -1, err
	}
	// The client is not read while the stream opens: bound the wait for
	// an agent that does not answer.
	openCtx, cancel := context.WithTimeout(ctx, agentOpenTimeout)
	defer cancel()
	ex, err := client.Exec(openCtx, proto.ExecRequest{
		Command: start.Command, TTY: start.TTY, Env: start.Env, Cwd: start.Cwd,
		TimeoutSeconds: int(start.Timeout),
		Rows:           clampSize(start.Rows), Cols: clampSize(start.Cols),
	})
	if err != nil {
		return -1, err
	}
	defer ex.Close()
	gone := make(chan struct{})
	go func() {
		pumpStdin(conn, ex, start.TTY)
		close(gone)
		ex.Close() // the client left: the guest kills the command
	}()
	if err := pumpOutput(conn, ex.Output); err != nil {
		ex.Close()
		return -1, errClientGone
	}
	code, err := ex.Wait(ctx)
	select {
	case <-gone:
		// The client left while the command ended: it was killed, or its
		// end cannot be delivered anyway.
		if err != nil {
			return -1, errClientGone
		}
	default:
	}
	return code, err
}

// waitForAgent retries Ping until the agent answers or d passes; d = 0
// skips the check.
func waitForAgent(ctx context.Context, client *agent.Client, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		err := client.Ping(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest agent not ready after %s: %w", d, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// pumpStdin forwards client frames to the command until the client goes.
// Only this goroutine reads conn.
func pumpStdin(conn *websocket.Conn, ex *agent.Exec, tty bool) {
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			return
		}
		if typ == websocket.TextMessage && handleExecControl(ex, msg, tty) {
			continue
		}
		if len(msg) > 0 {
			// A command that no longer reads its stdin fails this write;
			// keep reading so a disconnect is still noticed.
			_, _ = ex.Write(msg)
		}
	}
}

// handleExecControl applies msg if it is a control message.
func handleExecControl(ex *agent.Exec, msg []byte, tty bool) bool {
	if len(msg) == 0 || msg[0] != '{' {
		return false
	}
	var c execControl
	if json.Unmarshal(msg, &c) != nil {
		return false
	}
	switch {
	case c.Resize != nil:
		if tty && c.Resize.Rows > 0 && c.Resize.Cols > 0 {
			_ = ex.Resize(clampSize(c.Resize.Rows), clampSize(c.Resize.Cols))
		}
		return true
	case c.StdinEOF:
		_ = ex.CloseStdin()
		return true
	}
	return false
}

// pumpOutput sends the command's output as BINARY frames until it ends.
// It fails only when the client cannot be written to.
func pumpOutput(conn *websocket.Conn, out io.Reader) error {
	buf := make([]byte, chunkSize)
	for {
		n, err := out.Read(buf)
		if n > 0 {
			if werr := conn.WriteMessage(websocket.BinaryMessage, buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			return nil // EOF, or a broken session that Wait reports
		}
	}
}

func clampSize(v uint32) uint16 { return uint16(min(v, 0xffff)) }

// guestMessage is err as a client should read it: the guest's own words
// for errors it reported.
func guestMessage(err error) string {
	var re *proto.RemoteError
	if errors.As(err, &re) {
		return re.Message
	}
	return err.Error()
}
