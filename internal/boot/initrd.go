package boot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hypeman-vm/hypeman/internal/atomicfile"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/paths"
)

// initrdFormat names the layout of the archive; bump it when the layout
// changes so that old cached archives are not reused.
const initrdFormat = "hypeman-initrd-v1"

// keepInitrds is how many initrd archives BuildInitrd keeps (the current
// one and the most recently used others).
const keepInitrds = 3

// Paths inside the initramfs.
const (
	// ModulesPath is the directory holding every module file, flat.
	ModulesPath = "/lib/modules"
	// LoadOrderPath lists the module file names in ModulesPath, one per
	// line, dependencies first: the guest init loads them in this order.
	LoadOrderPath = "/lib/modules/load-order"
)

// initrdModule is a module file to pack.
type initrdModule struct {
	base string // file name inside ModulesPath
	data []byte
}

// BuildInitrd returns the path of an uncompressed newc cpio initramfs for
// kernel k holding /init (guestBinary), /dev/console, /dev/null, the guest
// modules of k under ModulesPath and LoadOrderPath.
//
// The archive is stored as p.InitrdDir()/<sha256>.cpio, where the hash
// covers the archive format, guestBinary, k.Version and every module's
// name and contents. An existing archive with that hash is returned as is
// (its mtime is refreshed so pruning sees it as recent); otherwise it is
// written atomically, and all but the keepInitrds most recently used
// archives are removed. Safe to call concurrently: racing builders write
// identical bytes and each renames its own temporary file into place.
func BuildInitrd(ctx context.Context, p *paths.Paths, k Kernel, guestBinary []byte) (string, error) {
	if len(guestBinary) == 0 {
		return "", errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_init", "initrd: empty guest binary")
	}
	mods, err := readInitrdModules(k)
	if err != nil {
		return "", err
	}
	out := filepath.Join(p.InitrdDir(), initrdHash(k.Version, guestBinary, mods)+".cpio")
	if _, err := os.Stat(out); err == nil {
		now := time.Now()
		os.Chtimes(out, now, now)
		return out, nil
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	if err := writeInitrd(&buf, guestBinary, mods); err != nil {
		return "", err
	}
	if err := os.MkdirAll(p.InitrdDir(), 0o755); err != nil {
		return "", fmt.Errorf("boot: %w", err)
	}
	if err := atomicfile.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("boot: write initrd: %w", err)
	}
	pruneInitrds(p.InitrdDir(), out)
	return out, nil
}

// readInitrdModules resolves k's guest modules and reads them, in load
// order. Module files go into one flat directory, so their base names must
// be unique.
func readInitrdModules(k Kernel) ([]initrdModule, error) {
	resolved, err := ResolveModules(k.ModulesDir, GuestModules())
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var mods []initrdModule
	for _, m := range resolved {
		base := path.Base(m.File)
		if seen[base] {
			return nil, fmt.Errorf("boot: two guest modules named %s in %s: %w", base, k.ModulesDir, errdefs.ErrInternal)
		}
		seen[base] = true
		data, err := os.ReadFile(filepath.Join(k.ModulesDir, filepath.FromSlash(m.File)))
		if err != nil {
			return nil, fmt.Errorf("boot: %w", err)
		}
		mods = append(mods, initrdModule{base: base, data: data})
	}
	return mods, nil
}

func initrdHash(version string, guest []byte, mods []initrdModule) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nkernel %s\ninit %x\n", initrdFormat, version, sha256.Sum256(guest))
	for _, m := range mods {
		fmt.Fprintf(h, "module %s %x\n", m.base, sha256.Sum256(m.data))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// writeInitrd writes the archive. /dev/console must exist before /init
// runs: the kernel opens it for init's stdin, stdout and stderr.
func writeInitrd(w *bytes.Buffer, guest []byte, mods []initrdModule) error {
	c := newNewcWriter(w)
	c.Dir("dev", 0o755)
	c.CharDev("dev/console", 0o600, 5, 1)
	c.CharDev("dev/null", 0o666, 1, 3)
	c.File("init", 0o755, guest)
	c.Dir("lib", 0o755)
	c.Dir(strings.TrimPrefix(ModulesPath, "/"), 0o755)
	var order strings.Builder
	for _, m := range mods {
		c.File(strings.TrimPrefix(ModulesPath, "/")+"/"+m.base, 0o644, m.data)
		order.WriteString(m.base + "\n")
	}
	c.File(strings.TrimPrefix(LoadOrderPath, "/"), 0o644, []byte(order.String()))
	if err := c.Close(); err != nil {
		return fmt.Errorf("boot: write initrd: %w", err)
	}
	return nil
}

// pruneInitrds removes all but the keepInitrds most recently used archives
// in dir, never current. QEMU reads -initrd when its process starts, also
// when it restores a snapshot with -incoming, so an instance that must
// outlive a kernel or init upgrade should keep its own hard link to the
// archive it booted; this package does not know which instances exist.
func pruneInitrds(dir, current string) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.cpio"))
	type aged struct {
		path string
		mod  time.Time
	}
	var all []aged
	for _, f := range files {
		if st, err := os.Stat(f); err == nil && f != current {
			all = append(all, aged{f, st.ModTime()})
		}
	}
	slices.SortFunc(all, func(a, b aged) int { return b.mod.Compare(a.mod) })
	for i, a := range all {
		if i >= keepInitrds-1 {
			os.Remove(a.path)
		}
	}
}
