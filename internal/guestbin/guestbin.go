// Package guestbin carries the hypeman-guest binary (the guest init, built
// from cmd/hypeman-guest with CGO_ENABLED=0) inside the hypeman binary, so
// that one file is all a host needs. `make build` compiles the guest binary
// into bin/ before compiling hypeman.
package guestbin

import (
	"embed"
	"errors"
	"io/fs"
)

//go:embed bin
var files embed.FS

// ErrMissing means hypeman was compiled without the guest binary.
var ErrMissing = errors.New("guestbin: hypeman was built without the guest binary; build with `make build`")

// Binary returns the guest binary.
func Binary() ([]byte, error) {
	b, err := fs.ReadFile(files, "bin/hypeman-guest")
	if err != nil || len(b) == 0 {
		return nil, ErrMissing
	}
	return b, nil
}
