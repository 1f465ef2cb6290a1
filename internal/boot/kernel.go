package boot

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hypeman-vm/hypeman/internal/atomicfile"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/paths"
)

// Kernel is a guest kernel ready to boot.
type Kernel struct {
	// Version is the kernel release (uname -r), e.g. "6.1.0-57-cloud-amd64".
	Version string
	// Vmlinuz is the kernel image passed to QEMU's -kernel.
	Vmlinuz string
	// ModulesDir has the /lib/modules/<version> layout: kernel/... .ko
	// files and modules.builtin. For an installed kernel it holds only the
	// closure of GuestModules.
	ModulesDir string
}

// KernelOverride names a kernel supplied by configuration instead of the
// Debian package. ModulesDir must have the /lib/modules/<version> layout
// (kernel/ and modules.builtin) and match Vmlinuz.
type KernelOverride struct {
	Vmlinuz    string
	ModulesDir string
}

// Option adjusts EnsureKernel.
type Option func(*options)

type options struct {
	override    *KernelOverride
	version     string
	metapackage string
	fetch       fetchFunc
}

// WithOverride makes EnsureKernel use the given kernel and install nothing.
func WithOverride(o KernelOverride) Option {
	return func(opts *options) { opts.override = &o }
}

// WithVersion pins the kernel release (e.g. "6.1.0-57-cloud-amd64"); it is
// installed from package linux-image-<version> if missing.
func WithVersion(version string) Option {
	return func(opts *options) { opts.version = version }
}

// WithMetapackage changes the metapackage that names the kernel package
// (default DefaultMetapackage).
func WithMetapackage(name string) Option {
	return func(opts *options) { opts.metapackage = name }
}

// EnsureKernel returns the guest kernel, installing it under p.KernelDir
// first if needed.
//
// Which kernel: the override if given; else the pinned version if given;
// else the newest kernel already installed; else the one the metapackage
// depends on now. An installed kernel is therefore kept until a version is
// pinned or it is removed: a daemon restart never switches kernels because
// the apt lists changed, and no apt command runs when one is installed.
//
// Safe to call concurrently from goroutines and processes: installation is
// serialized by a lock file under p.SystemDir(), and a kernel directory
// appears by one rename, so it is either absent or complete.
func EnsureKernel(ctx context.Context, p *paths.Paths, log *slog.Logger, opts ...Option) (Kernel, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := options{metapackage: DefaultMetapackage, fetch: aptFetch}
	for _, opt := range opts {
		opt(&o)
	}
	if o.override != nil {
		return useOverride(*o.override)
	}
	if k, ok := findInstalled(p, o.version); ok {
		return k, nil
	}
	if err := os.MkdirAll(kernelRoot(p), 0o755); err != nil {
		return Kernel{}, fmt.Errorf("boot: %w", err)
	}
	lock, err := lockFile(ctx, filepath.Join(p.SystemDir(), "kernel.lock"))
	if err != nil {
		return Kernel{}, err
	}
	defer lock.Unlock()
	// Another caller may have installed it while we waited.
	if k, ok := findInstalled(p, o.version); ok {
		return k, nil
	}
	removeStaleFetches(p, log)
	pkg := "linux-image-" + o.version
	if o.version == "" {
		if pkg, err = resolvePackage(ctx, o.metapackage); err != nil {
			return Kernel{}, err
		}
	}
	return install(ctx, p, log, o.fetch, pkg)
}

// kernelRoot is the parent of every p.KernelDir(version).
func kernelRoot(p *paths.Paths) string { return filepath.Dir(p.KernelDir("x")) }

func installedKernel(p *paths.Paths, version string) (Kernel, bool) {
	k := Kernel{
		Version:    version,
		Vmlinuz:    filepath.Join(p.KernelDir(version), "vmlinuz"),
		ModulesDir: filepath.Join(p.KernelDir(version), "modules"),
	}
	if st, err := os.Stat(k.Vmlinuz); err != nil || !st.Mode().IsRegular() {
		return Kernel{}, false
	}
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "modules.builtin")); err != nil {
		return Kernel{}, false
	}
	return k, true
}

// findInstalled returns the installed kernel with the given version, or
// the newest installed one when version is empty.
func findInstalled(p *paths.Paths, version string) (Kernel, bool) {
	if version != "" {
		return installedKernel(p, version)
	}
	ents, _ := os.ReadDir(kernelRoot(p))
	var versions []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			versions = append(versions, e.Name())
		}
	}
	slices.SortFunc(versions, compareVersions)
	for i := len(versions) - 1; i >= 0; i-- {
		if k, ok := installedKernel(p, versions[i]); ok {
			return k, true
		}
	}
	return Kernel{}, false
}

// removeStaleFetches deletes work directories left by a crashed install.
// The caller holds the kernel lock, so none of them is in use.
func removeStaleFetches(p *paths.Paths, log *slog.Logger) {
	stale, _ := filepath.Glob(filepath.Join(kernelRoot(p), ".fetch-*"))
	for _, dir := range stale {
		log.Info("boot: removing stale kernel download", "dir", dir)
		os.RemoveAll(dir)
	}
}

// install fetches pkg, copies vmlinuz and the guest module closure into a
// staging directory and renames it to p.KernelDir(version).
func install(ctx context.Context, p *paths.Paths, log *slog.Logger, fetch fetchFunc, pkg string) (Kernel, error) {
	work, err := os.MkdirTemp(kernelRoot(p), ".fetch-")
	if err != nil {
		return Kernel{}, fmt.Errorf("boot: %w", err)
	}
	defer os.RemoveAll(work)
	// apt-get download runs as user _apt where it can; let it read the dir.
	os.Chmod(work, 0o755)
	log.Info("boot: installing guest kernel", "package", pkg)
	root, err := fetch(ctx, log, pkg, work)
	if err != nil {
		return Kernel{}, err
	}
	version, err := packageVersion(root)
	if err != nil {
		return Kernel{}, err
	}
	stage := filepath.Join(work, "stage")
	if err := stageKernel(root, version, stage); err != nil {
		return Kernel{}, err
	}
	if k, ok := installedKernel(p, version); ok {
		return k, nil // the package held a version that was already here
	}
	dest := p.KernelDir(version)
	os.RemoveAll(dest) // an incomplete leftover; complete ones returned above
	if err := os.Rename(stage, dest); err != nil {
		return Kernel{}, fmt.Errorf("boot: install kernel %s: %w", version, err)
	}
	if err := atomicfile.SyncDir(kernelRoot(p)); err != nil {
		return Kernel{}, err
	}
	k, _ := installedKernel(p, version)
	log.Info("boot: installed guest kernel", "version", version, "dir", dest)
	return k, nil
}

// packageVersion finds the one lib/modules/<version> in an unpacked package.
func packageVersion(root string) (string, error) {
	ents, err := os.ReadDir(filepath.Join(root, "lib", "modules"))
	if err != nil {
		return "", fmt.Errorf("boot: kernel package has no modules: %w", err)
	}
	if len(ents) != 1 || !ents[0].IsDir() {
		return "", fmt.Errorf("boot: kernel package has %d entries in lib/modules, want 1: %w",
			len(ents), errdefs.ErrInternal)
	}
	return ents[0].Name(), nil
}

// stageKernel writes vmlinuz and modules/ (the guest closure plus
// modules.builtin) under stage, every file synced.
func stageKernel(root, version, stage string) error {
	modSrc := filepath.Join(root, "lib", "modules", version)
	mods, err := ResolveModules(modSrc, GuestModules())
	if err != nil {
		return err
	}
	if err := copyFile(filepath.Join(root, "boot", "vmlinuz-"+version), filepath.Join(stage, "vmlinuz")); err != nil {
		return err
	}
	files := []string{"modules.builtin"}
	for _, m := range mods {
		files = append(files, m.File)
	}
	for _, f := range files {
		rel := filepath.FromSlash(f)
		if err := copyFile(filepath.Join(modSrc, rel), filepath.Join(stage, "modules", rel)); err != nil {
			return err
		}
	}
	return nil
}

// copyFile copies src to dst (creating parents) and fsyncs dst.
func copyFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("boot: copy %s: %w", src, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return fmt.Errorf("boot: sync %s: %w", dst, err)
	}
	return out.Close()
}
