package boot

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// DefaultMetapackage is the Debian package whose dependency names the
// current cloud kernel package (linux-image-<version>).
const DefaultMetapackage = "linux-image-cloud-amd64"

// resolvePackage asks apt which kernel package the metapackage depends on.
// apt-cache reads only the local package lists; no network.
func resolvePackage(ctx context.Context, metapackage string) (string, error) {
	cmd := exec.CommandContext(ctx, "apt-cache", "depends", metapackage)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("boot: apt-cache depends %s: %w: %s: %w",
			metapackage, err, strings.TrimSpace(stderr.String()), errdefs.ErrUnavailable)
	}
	pkg := parseDepends(out)
	if pkg == "" {
		return "", fmt.Errorf("boot: apt-cache depends %s names no linux-image-<version> package: %w",
			metapackage, errdefs.ErrNotFound)
	}
	return pkg, nil
}

// parseDepends picks the first concrete "Depends: linux-image-<digit>..."
// from apt-cache depends output. Alternatives are marked with a leading '|'
// and virtual packages are written <name>; the latter are skipped.
func parseDepends(out []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimLeft(strings.TrimSpace(sc.Text()), "|")
		key, val, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(key) != "Depends" {
			continue
		}
		val = strings.TrimSpace(val)
		rest, ok := strings.CutPrefix(val, "linux-image-")
		if !ok || rest == "" || rest[0] < '0' || rest[0] > '9' || strings.ContainsAny(val, " <>") {
			continue
		}
		return val
	}
	return ""
}

// fetchFunc puts the unpacked file tree of kernel package pkg (boot/ and
// lib/modules/) under a new directory inside dir and returns that root.
type fetchFunc func(ctx context.Context, log *slog.Logger, pkg, dir string) (string, error)

// aptFetch downloads pkg with apt-get download and unpacks it with
// dpkg-deb -x. This installs nothing on the host: no maintainer scripts,
// no update-initramfs.
func aptFetch(ctx context.Context, log *slog.Logger, pkg, dir string) (string, error) {
	debDir := filepath.Join(dir, "deb")
	if err := os.Mkdir(debDir, 0o755); err != nil {
		return "", fmt.Errorf("boot: %w", err)
	}
	// apt warns that it downloads "unsandboxed as root" because user _apt
	// cannot write here; the download itself works.
	if err := run(ctx, log, debDir, "apt-get", "download", pkg); err != nil {
		return "", fmt.Errorf("boot: download %s: %w: %w", pkg, err, errdefs.ErrUnavailable)
	}
	debs, _ := filepath.Glob(filepath.Join(debDir, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("boot: apt-get download %s left %d .deb files: %w", pkg, len(debs), errdefs.ErrInternal)
	}
	root := filepath.Join(dir, "root")
	if err := run(ctx, log, dir, "dpkg-deb", "-x", debs[0], root); err != nil {
		return "", fmt.Errorf("boot: unpack %s: %w", debs[0], err)
	}
	return root, nil
}

// run runs a command, logging its output at debug level and returning it
// in the error on failure.
func run(ctx context.Context, log *slog.Logger, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	log.Debug("boot: ran command", "cmd", name, "args", args, "output", string(out))
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
