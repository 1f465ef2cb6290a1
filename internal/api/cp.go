package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path"

	"github.com/gorilla/websocket"

	"github.com/hypeman-vm/hypeman/internal/agent"
	"github.com/hypeman-vm/hypeman/internal/agent/proto"
)

// cpRequest is the first client message of a cp (the SDK's CpRequest),
// with the fields hypeman cp adds: IsSymlink and LinkTarget to make a
// symbolic link, Mtime.
type cpRequest struct {
	Direction   string  `json:"direction"`
	GuestPath   string  `json:"guest_path"`
	IsDir       bool    `json:"is_dir"`
	Mode        *uint32 `json:"mode"`
	FollowLinks bool    `json:"follow_links"`
	SrcBasename string  `json:"src_basename"`
	UID         *int    `json:"uid"`
	GID         *int    `json:"gid"`
	IsSymlink   bool    `json:"is_symlink"`
	LinkTarget  string  `json:"link_target"`
	Mtime       int64   `json:"mtime"`
}

// Messages the server sends (TEXT frames).
type (
	cpResult struct {
		Type         string `json:"type"` // "result"
		Success      bool   `json:"success"`
		Error        string `json:"error,omitempty"`
		BytesWritten int64  `json:"bytes_written"`
	}
	cpHeader struct {
		Type       string `json:"type"` // "header"
		Path       string `json:"path"`
		Mode       uint32 `json:"mode"`
		IsDir      bool   `json:"is_dir"`
		IsSymlink  bool   `json:"is_symlink,omitempty"`
		LinkTarget string `json:"link_target,omitempty"`
		Size       int64  `json:"size"`
		Mtime      int64  `json:"mtime"`
		UID        int    `json:"uid"`
		GID        int    `json:"gid"`
	}
	cpEnd struct {
		Type  string `json:"type"` // "end"
		Final bool   `json:"final"`
	}
	cpError struct {
		Type    string `json:"type"` // "error"
		Message string `json:"message"`
		Path    string `json:"path,omitempty"`
	}
	cpStat struct {
		Type       string `json:"type"` // "stat"
		Exists     bool   `json:"exists"`
		IsDir      bool   `json:"is_dir"`
		IsFile     bool   `json:"is_file"`
		IsSymlink  bool   `json:"is_symlink"`
		LinkTarget string `json:"link_target"`
		Mode       uint32 `json:"mode"`
		Size       int64  `json:"size"`
		Error      string `json:"error"`
	}
)

// serveCp implements GET /instances/{id}/cp (WebSocket) as the SDK's
// lib/cp.ts speaks it: see hypeman-api.md 5.4.
func (s *Server) serveCp(w http.ResponseWriter, r *http.Request) {
	conn, client := s.upgradeToAgent(w, r)
	if conn == nil {
		return
	}
	defer closeWS(conn)
	typ, msg, err := conn.ReadMessage()
	if err != nil {
		return
	}
	var req cpRequest
	if typ != websocket.TextMessage {
		_ = writeText(conn, cpError{Type: "error", Message: "first message must be JSON text"})
		return
	}
	if err := json.Unmarshal(msg, &req); err != nil {
		_ = writeText(conn, cpError{Type: "error", Message: "invalid JSON: " + err.Error()})
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	switch req.Direction {
	case "to":
		cpTo(ctx, cancel, conn, client, req)
	case "from":
		watchClose(conn, cancel)
		cpFrom(ctx, conn, client, req)
	case "stat":
		watchClose(conn, cancel)
		cpStatOf(ctx, conn, client, req)
	default:
		_ = writeText(conn, cpError{Type: "error", Message: "invalid direction: " + req.Direction})
	}
}

// watchClose reads (and drops) client frames, calling cancel when the
// client goes: the pending agent call then aborts.
func watchClose(conn *websocket.Conn, cancel context.CancelFunc) {
	go func() {
		for {
			if _, _, err := conn.NextReader(); err != nil {
				cancel()
				return
			}
		}
	}()
}

// cpTo writes one file, directory or symlink: client BINARY data frames
// then TEXT {"type":"end"}; answer TEXT {"type":"result",...}. File data
// is streamed to the agent as it arrives. A client that goes before "end"
// aborts the agent call (the guest drops its temp file).
func cpTo(ctx context.Context, cancel context.CancelFunc, conn *websocket.Conn, client *agent.Client, req cpRequest) {
	creq, err := copyToRequest(ctx, client, req)
	if err != nil {
		_ = writeText(conn, cpResult{Type: "result", Error: guestMessage(err)})
		return
	}
	isFile := !creq.IsDir && creq.Symlink == ""
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	pr, pw := io.Pipe()
	if isFile {
		go func() {
			n, err := client.CopyTo(ctx, creq, pr)
			// Unblocks a Write of ours after an early failure.
			pr.CloseWithError(errors.Join(err, io.ErrClosedPipe))
			done <- result{n, err}
		}()
	}
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			// Gone before "end": abort; nobody is left to answer.
			cancel()
			pw.CloseWithError(errClientGone)
			if isFile {
				<-done
			}
			return
		}
		if typ == websocket.BinaryMessage {
			if isFile {
				if _, err := pw.Write(msg); err != nil {
					res := <-done
					sendCopyResult(conn, res.n, res.err)
					return
				}
			}
			continue
		}
		if !isEndMessage(msg) {
			continue
		}
		var res result
		if isFile {
			pw.Close()
			res = <-done
		} else {
			res.n, res.err = client.CopyTo(ctx, creq, nil)
		}
		sendCopyResult(conn, res.n, res.err)
		return
	}
}

func sendCopyResult(conn *websocket.Conn, n int64, err error) {
	res := cpResult{Type: "result", Success: err == nil, BytesWritten: n}
	if err != nil {
		res.Error, res.BytesWritten = guestMessage(err), 0
	}
	_ = writeText(conn, res)
}

func isEndMessage(msg []byte) bool {
	var m struct {
		Type string `json:"type"`
	}
	return json.Unmarshal(msg, &m) == nil && m.Type == "end"
}

// copyToRequest turns the client's request into the agent's. With
// src_basename, a guest_path that is an existing directory receives the
// entry inside it (docker cp's rule).
func copyToRequest(ctx context.Context, client *agent.Client, req cpRequest) (proto.CopyToRequest, error) {
	dst := req.GuestPath
	if dst == "" {
		return proto.CopyToRequest{}, errors.New("guest_path is required")
	}
	if req.SrcBasename != "" {
		info, err := guestStat(ctx, client, dst, true)
		if err != nil {
			return proto.CopyToRequest{}, err
		}
		if info.Exists && info.IsDir {
			dst = path.Join(dst, path.Base(req.SrcBasename))
		}
	}
	out := proto.CopyToRequest{Path: dst, IsDir: req.IsDir, UID: req.UID, GID: req.GID, Mtime: req.Mtime}
	switch {
	case req.IsSymlink:
		if req.LinkTarget == "" {
			return out, errors.New("link_target is required for a symlink")
		}
		out.IsDir, out.Symlink = false, req.LinkTarget
	case req.Mode != nil:
		out.Mode = *req.Mode & 0o7777
	case req.IsDir:
		out.Mode = 0o755
	default:
		out.Mode = 0o644
	}
	return out, nil
}

// cpFrom streams a guest file or tree: per entry a TEXT header, for
// regular files BINARY data and TEXT {"type":"end","final":false}; at the
// end TEXT {"type":"end","final":true}; on failure TEXT {"type":"error"}.
func cpFrom(ctx context.Context, conn *websocket.Conn, client *agent.Client, req cpRequest) {
	current := req.GuestPath
	err := client.CopyFrom(ctx, proto.CopyFromRequest{Path: req.GuestPath, FollowLinks: req.FollowLinks},
		func(e proto.Entry, body io.Reader) error {
			current = e.Path
			return sendEntry(conn, e, body)
		})
	if errors.Is(err, errClientGone) || ctx.Err() != nil {
		return
	}
	if err != nil {
		_ = writeText(conn, cpError{Type: "error", Message: guestMessage(err), Path: current})
		return
	}
	_ = writeText(conn, cpEnd{Type: "end", Final: true})
}

func sendEntry(conn *websocket.Conn, e proto.Entry, body io.Reader) error {
	h := cpHeader{
		Type: "header", Path: e.Path, Mode: e.Mode & 0o7777, IsDir: e.IsDir,
		IsSymlink: e.IsSymlink, LinkTarget: e.LinkTarget,
		Size: e.Size, Mtime: e.Mtime, UID: e.UID, GID: e.GID,
	}
	if err := writeText(conn, h); err != nil {
		return errClientGone
	}
	if e.IsDir || e.IsSymlink {
		return nil
	}
	buf := make([]byte, chunkSize)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if werr := writeData(conn, buf[:n]); werr != nil {
				return errClientGone
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if err := writeText(conn, cpEnd{Type: "end"}); err != nil {
		return errClientGone
	}
	return nil
}

// writeData sends file bytes as BINARY frames that cp.ts cannot mistake
// for a message: it JSON-parses any frame (text or binary) whose first
// byte is '{' or '[' and drops the ones that parse. A frame starting with
// those is split into the run of '{'/'[' bytes (never valid JSON) and the
// rest (which starts with another byte, so it is taken as data).
func writeData(conn *websocket.Conn, b []byte) error {
	if len(b) > 0 && isJSONOpener(b[0]) {
		i := 0
		for i < len(b) && isJSONOpener(b[i]) {
			i++
		}
		if err := conn.WriteMessage(websocket.BinaryMessage, b[:i]); err != nil {
			return err
		}
		b = b[i:]
	}
	if len(b) == 0 {
		return nil
	}
	return conn.WriteMessage(websocket.BinaryMessage, b)
}

func isJSONOpener(c byte) bool { return c == '{' || c == '[' }

// cpStatOf answers TEXT {"type":"stat",...}.
func cpStatOf(ctx context.Context, conn *websocket.Conn, client *agent.Client, req cpRequest) {
	info, err := guestStat(ctx, client, req.GuestPath, req.FollowLinks)
	if err != nil {
		_ = writeText(conn, cpError{Type: "error", Message: guestMessage(err), Path: req.GuestPath})
		return
	}
	_ = writeText(conn, cpStat{
		Type: "stat", Exists: info.Exists, IsDir: info.IsDir, IsFile: info.IsFile,
		IsSymlink: info.IsSymlink, LinkTarget: info.LinkTarget, Mode: info.Mode & 0o7777,
		Size: info.Size, Error: info.Error,
	})
}
