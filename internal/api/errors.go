package api

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// classes maps each error class to its HTTP status and default code.
var classes = []struct {
	class  error
	status int
	code   string
}{
	{errdefs.ErrNotFound, http.StatusNotFound, "not_found"},
	{errdefs.ErrAlreadyExists, http.StatusConflict, "already_exists"},
	{errdefs.ErrInvalidArgument, http.StatusBadRequest, "invalid_request"},
	{errdefs.ErrAmbiguous, http.StatusConflict, "ambiguous"},
	{errdefs.ErrConflict, http.StatusConflict, "conflict"},
	{errdefs.ErrFailedPrecondition, http.StatusBadRequest, "failed_precondition"},
	{errdefs.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
	{errdefs.ErrNotImplemented, http.StatusNotImplemented, "not_implemented"},
}

// statusOf returns the status, code and client message for err. Errors of
// no known class are internal: their details go to the log, not the client.
func statusOf(err error) (status int, code, message string) {
	for _, c := range classes {
		if errors.Is(err, c.class) {
			code = errdefs.Code(err)
			if code == "" {
				code = c.code
			}
			return c.status, code, errdefs.Message(err)
		}
	}
	return http.StatusInternalServerError, "internal_error", "internal error"
}

// errorBody is the API's error object.
type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError writes err as the API error body with its mapped status.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	status, code, msg := statusOf(err)
	if status == http.StatusInternalServerError {
		log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	} else {
		log.Debug("request rejected", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	writeJSONError(w, status, code, msg)
}

func writeJSONError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	if status == http.StatusConflict || status == http.StatusNotImplemented {
		// Deterministic answers: tell the SDK (which retries 409 and 5xx)
		// that retrying cannot help.
		w.Header().Set("X-Should-Retry", "false")
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody{Code: code, Message: msg})
}
