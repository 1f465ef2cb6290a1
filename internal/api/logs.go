package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/logs"
	"github.com/hypeman-vm/hypeman/internal/oapi"
)

// GetInstanceLogs implements GET /instances/{id}/logs as server-sent
// events: each line is one event whose data is the line as a JSON string.
func (s *Server) GetInstanceLogs(ctx context.Context, req oapi.GetInstanceLogsRequestObject) (oapi.GetInstanceLogsResponseObject, error) {
	source := "app"
	if req.Params.Source != nil {
		source = string(*req.Params.Source)
	}
	path, err := s.Instances.LogPath(ctx, req.Id, source)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, errdefs.Newf(errdefs.ErrNotFound, "log_not_found", "requested log file does not exist yet")
	}
	tail := 100
	if req.Params.Tail != nil {
		tail = *req.Params.Tail
	}
	return logStream{ctx: ctx, path: path, tail: tail, follow: deref(req.Params.Follow)}, nil
}

// logStream writes the SSE response itself, flushing after every event.
type logStream struct {
	ctx    context.Context
	path   string
	tail   int
	follow bool
}

func (l logStream) VisitGetInstanceLogsResponse(w http.ResponseWriter) error {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	return logs.Stream(l.ctx, l.path, l.tail, l.follow, func(line string) error {
		data, _ := json.Marshal(line)
		if _, err := w.Write(append(append([]byte("data: "), data...), '\n', '\n')); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	})
}
