package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

func TestStatusOf(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantCode   string
		wantMsg    string
	}{
		{"not found", fmt.Errorf("image x: %w", errdefs.ErrNotFound), 404, "not_found", "image x: not found"},
		{"already exists", fmt.Errorf("v: %w", errdefs.ErrAlreadyExists), 409, "already_exists", "v: already exists"},
		{"invalid argument", fmt.Errorf("bad: %w", errdefs.ErrInvalidArgument), 400, "invalid_request", "bad: invalid argument"},
		{"ambiguous", fmt.Errorf("%w", errdefs.ErrAmbiguous), 409, "ambiguous", "ambiguous"},
		{"conflict", fmt.Errorf("c: %w", errdefs.ErrConflict), 409, "conflict", "c: conflict"},
		{"failed precondition", fmt.Errorf("p: %w", errdefs.ErrFailedPrecondition), 400, "failed_precondition", "p: failed precondition"},
		{"unavailable", fmt.Errorf("u: %w", errdefs.ErrUnavailable), 503, "unavailable", "u: unavailable"},
		{"not implemented", fmt.Errorf("n: %w", errdefs.ErrNotImplemented), 501, "not_implemented", "n: not implemented"},
		{"internal", fmt.Errorf("disk on fire: %w", errdefs.ErrInternal), 500, "internal_error", "internal error"},
		{"unclassified", errors.New("open /var/lib/secret: permission denied"), 500, "internal_error", "internal error"},
		{"coded keeps its code", errdefs.Newf(errdefs.ErrConflict, "invalid_state", "cannot start"), 409, "invalid_state", "cannot start"},
		{"coded and wrapped keeps code and message", fmt.Errorf("create: boot-vm: %w",
			errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_size", "size 1MB is below the minimum")),
			400, "invalid_size", "size 1MB is below the minimum"},
		{"WithCode", errdefs.WithCode("image_not_ready", fmt.Errorf("pulling: %w", errdefs.ErrInvalidArgument)),
			400, "image_not_ready", "pulling: invalid argument"},
		{"coded internal stays generic", errdefs.Newf(errdefs.ErrInternal, "boom", "secret detail"), 500, "internal_error", "internal error"},
		{"coded unclassified stays generic", errdefs.WithCode("weird", errors.New("secret")), 500, "internal_error", "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, code, msg := statusOf(tt.err)
			if status != tt.wantStatus || code != tt.wantCode || msg != tt.wantMsg {
				t.Errorf("statusOf = %d %q %q, want %d %q %q", status, code, msg, tt.wantStatus, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

// Every class has exactly one row in the mapping.
func TestEveryClassIsMapped(t *testing.T) {
	for _, class := range []error{errdefs.ErrNotFound, errdefs.ErrAlreadyExists, errdefs.ErrInvalidArgument,
		errdefs.ErrConflict, errdefs.ErrFailedPrecondition, errdefs.ErrUnavailable, errdefs.ErrNotImplemented,
		errdefs.ErrAmbiguous} {
		if status, _, _ := statusOf(fmt.Errorf("x: %w", class)); status == http.StatusInternalServerError {
			t.Errorf("class %v maps to 500", class)
		}
	}
}

func TestWriteError(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		status    int
		body      errorBody
		noRetry   bool
		logsError bool
	}{
		{"conflict", errdefs.Newf(errdefs.ErrConflict, "name_conflict", "instance name 'a' already exists"),
			409, errorBody{"name_conflict", "instance name 'a' already exists"}, true, false},
		{"ambiguous", errdefs.Newf(errdefs.ErrAmbiguous, "ambiguous", "multiple resources match, use full ID"),
			409, errorBody{"ambiguous", "multiple resources match, use full ID"}, true, false},
		{"already exists", fmt.Errorf("%w", errdefs.ErrAlreadyExists), 409, errorBody{"already_exists", "already exists"}, true, false},
		{"not found", errdefs.Newf(errdefs.ErrNotFound, "not_found", "instance x not found"),
			404, errorBody{"not_found", "instance x not found"}, false, false},
		{"unavailable", fmt.Errorf("%w", errdefs.ErrUnavailable), 503, errorBody{"unavailable", "unavailable"}, false, false},
		{"not implemented", errdefs.Newf(errdefs.ErrNotImplemented, "not_implemented", "fork is not implemented by this server yet"),
			501, errorBody{"not_implemented", "fork is not implemented by this server yet"}, true, false},
		{"internal", errors.New("secret path /x"), 500, errorBody{"internal_error", "internal error"}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logBuf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelInfo}))
			w := httptest.NewRecorder()
			writeError(w, httptest.NewRequest("POST", "/instances", nil), log, tt.err)
			if w.Code != tt.status {
				t.Errorf("status %d, want %d", w.Code, tt.status)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if got := w.Header().Get("X-Should-Retry"); (got == "false") != tt.noRetry || (!tt.noRetry && got != "") {
				t.Errorf("X-Should-Retry %q (want false: %v)", got, tt.noRetry)
			}
			var body errorBody
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", w.Body, err)
			}
			if body != tt.body {
				t.Errorf("body %+v, want %+v", body, tt.body)
			}
			logged := logBuf.String()
			if tt.logsError != strings.Contains(logged, "level=ERROR") {
				t.Errorf("log %q (want an error entry: %v)", logged, tt.logsError)
			}
			if tt.logsError && !strings.Contains(logged, "secret path /x") {
				t.Errorf("the internal error's detail is not logged: %q", logged)
			}
		})
	}
}

func TestRecovererTurnsPanicInto500(t *testing.T) {
	var logBuf bytes.Buffer
	s := &Server{Deps: Deps{Log: slog.New(slog.NewTextHandler(&logBuf, nil))}}
	h := s.recoverer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { panic("nil map") }))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/instances", nil))
	if w.Code != 500 {
		t.Errorf("status %d", w.Code)
	}
	var body errorBody
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	if body != (errorBody{"internal_error", "internal error"}) {
		t.Errorf("body %+v", body)
	}
	if !strings.Contains(logBuf.String(), "nil map") {
		t.Errorf("panic not logged: %q", logBuf.String())
	}

	// http.ErrAbortHandler is re-panicked for net/http to handle.
	h = s.recoverer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { panic(http.ErrAbortHandler) }))
	defer func() {
		if v := recover(); v != http.ErrAbortHandler {
			t.Errorf("recovered %v, want http.ErrAbortHandler", v)
		}
	}()
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	t.Error("ErrAbortHandler was swallowed")
}
