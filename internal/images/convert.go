package images

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// convert flattens img's layers (mutate.Extract applies whiteouts and opaque
// directories), unpacks the result into a temporary directory under dir, and
// builds the erofs image out from it. It returns the size of out. The
// temporary directory and any partial output are removed in every case.
func convert(ctx context.Context, img v1.Image, dir, out, compression string) (int64, error) {
	tmp, err := os.MkdirTemp(dir, ".unpack-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	rc := mutate.Extract(img)
	err = unpack(ctx, rc, tmp)
	rc.Close()
	if err != nil {
		return 0, err
	}
	return mkfsErofs(ctx, tmp, out, compression)
}

// mkfsErofs builds out from the directory tree src, via a temporary file
// renamed into place once complete.
func mkfsErofs(ctx context.Context, src, out, compression string) (int64, error) {
	tmpOut := out + ".tmp"
	defer os.Remove(tmpOut)
	args := []string{"--quiet"}
	if compression != "" {
		args = append(args, "-z"+compression)
	}
	args = append(args, tmpOut, src)
	cmd := exec.CommandContext(ctx, "mkfs.erofs", args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("mkfs.erofs: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	f, err := os.Open(tmpOut)
	if err != nil {
		return 0, err
	}
	err = f.Sync()
	fi, statErr := f.Stat()
	f.Close()
	if err != nil || statErr != nil {
		return 0, fmt.Errorf("sync %s: %v %v", tmpOut, err, statErr)
	}
	if err := os.Rename(tmpOut, out); err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
