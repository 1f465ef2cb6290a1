package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unicode"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// useOverride checks a configured kernel: the image must be a bzImage, the
// guest modules must resolve in ModulesDir, and their vermagic must name
// the image's release (a mismatch would only show as insmod failures in
// the guest).
func useOverride(o KernelOverride) (Kernel, error) {
	version, err := bzImageVersion(o.Vmlinuz)
	if err != nil {
		return Kernel{}, err
	}
	mods, err := ResolveModules(o.ModulesDir, GuestModules())
	if err != nil {
		return Kernel{}, err
	}
	t := moduleTree{dir: o.ModulesDir, info: map[string]Modinfo{}}
	for _, m := range mods {
		mi, err := t.modinfo(m.File)
		if err != nil {
			return Kernel{}, err
		}
		if got := firstField(mi.Vermagic); got != version {
			return Kernel{}, errdefs.Newf(errdefs.ErrInvalidArgument, "kernel_mismatch",
				"kernel override: module %s is for kernel %q but %s is %q", m.File, got, o.Vmlinuz, version)
		}
	}
	return Kernel{Version: version, Vmlinuz: o.Vmlinuz, ModulesDir: o.ModulesDir}, nil
}

// bzImageVersion reads the kernel release from a bzImage's setup header:
// "HdrS" at 0x202 and, at 0x20e, the offset (minus 0x200) of a NUL-ended
// string starting with the release (Documentation/arch/x86/boot.rst).
func bzImageVersion(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("boot: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := f.ReadAt(hdr, 0); err != nil || string(hdr[0x202:0x206]) != "HdrS" {
		return "", errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_kernel", "%s is not a bzImage kernel", path)
	}
	off := int64(binary.LittleEndian.Uint16(hdr[0x20e:])) + 0x200
	buf := make([]byte, 256)
	n, _ := f.ReadAt(buf, off)
	s, _, _ := bytes.Cut(buf[:n], []byte{0})
	if v := firstField(string(s)); v != "" {
		return v, nil
	}
	return "", errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_kernel", "%s has no version string", path)
}

func firstField(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return ""
}

// compareVersions orders kernel releases naturally: runs of digits compare
// as numbers, so "6.1.0-57" sorts after "6.1.0-9".
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		ca, ra := chunk(a)
		cb, rb := chunk(b)
		if c := compareChunk(ca, cb); c != 0 {
			return c
		}
		a, b = ra, rb
	}
	return len(a) - len(b)
}

func chunk(s string) (string, string) {
	digit := unicode.IsDigit(rune(s[0]))
	i := 1
	for i < len(s) && unicode.IsDigit(rune(s[i])) == digit {
		i++
	}
	return s[:i], s[i:]
}

func compareChunk(a, b string) int {
	na, errA := strconv.ParseUint(a, 10, 64)
	nb, errB := strconv.ParseUint(b, 10, 64)
	if errA == nil && errB == nil {
		switch {
		case na < nb:
			return -1
		case na > nb:
			return 1
		}
		return 0
	}
	return strings.Compare(a, b)
}
