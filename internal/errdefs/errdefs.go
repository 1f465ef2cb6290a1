// Package errdefs defines the small, fixed set of error classes that domain
// packages return, and nothing else. Domain code wraps one of these sentinels
// with %w and context (IDs, names); the API layer maps each class to an HTTP
// status and error code in exactly one place (internal/api/errors.go).
//
// A class is checked with errors.Is. Never branch on err.Error().
package errdefs

import (
	"errors"
	"fmt"
)

// The error classes. Each is a sentinel to wrap, never to return bare.
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrConflict           = errors.New("conflict")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrUnavailable        = errors.New("unavailable")
	ErrNotImplemented     = errors.New("not implemented")
	ErrInternal           = errors.New("internal error")
	ErrAmbiguous          = errors.New("ambiguous")
)

// Coded is an error that carries a machine-readable API code (for example
// "invalid_state" or "invalid_size") in addition to its class. The API layer
// uses Code() as the error body's code when the error provides one.
type Coded interface {
	error
	Code() string
}

type codedError struct {
	code string
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }
func (e *codedError) Code() string  { return e.code }

// WithCode attaches an API error code to err. The class (found with errors.Is)
// is unchanged.
func WithCode(code string, err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code: code, err: err}
}

// Newf builds an error of class, with code, and message formatted from format
// and args. The message is what API clients see.
func Newf(class error, code, format string, args ...any) error {
	return &codedError{code: code, err: &classed{class: class, msg: fmt.Sprintf(format, args...)}}
}

// classed is an error whose message is exactly msg but which is of class.
type classed struct {
	class error
	msg   string
}

func (e *classed) Error() string { return e.msg }
func (e *classed) Unwrap() error { return e.class }

// Code returns the API code carried by err, or "" when none.
func Code(err error) string {
	var c Coded
	if errors.As(err, &c) {
		return c.Code()
	}
	return ""
}

// Message returns the client-facing message of err. For errors made by Newf it
// is the formatted message without any wrapping prefix added by callers that
// only wanted to keep the class.
func Message(err error) string {
	var c *classed
	if errors.As(err, &c) {
		return c.msg
	}
	return err.Error()
}
