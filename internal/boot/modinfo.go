package boot

import (
	"bytes"
	"debug/elf"
	"fmt"
	"strings"
)

// Modinfo is what a kernel module says about itself in its ELF .modinfo
// section: the fields modprobe would otherwise read from modules.dep.
type Modinfo struct {
	// Name is the module's name as the kernel knows it (always with '_',
	// even when the file name uses '-').
	Name string
	// Depends are the names of modules that must be loaded first.
	Depends []string
	// SoftPre are "softdep=pre:" names: modules modprobe loads first if it
	// can. They may be aliases rather than module names.
	SoftPre []string
	// Vermagic is the kernel release plus build flags the module was built
	// for; its first field is the kernel version (uname -r).
	Vermagic string
}

// ReadModinfo reads the .modinfo section of the uncompressed module at path.
func ReadModinfo(path string) (Modinfo, error) {
	f, err := elf.Open(path)
	if err != nil {
		return Modinfo{}, fmt.Errorf("boot: read module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return Modinfo{}, fmt.Errorf("boot: module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return Modinfo{}, fmt.Errorf("boot: read .modinfo of %s: %w", path, err)
	}
	mi := parseModinfo(data)
	if mi.Name == "" {
		return Modinfo{}, fmt.Errorf("boot: module %s: .modinfo has no name=", path)
	}
	return mi, nil
}

// parseModinfo decodes NUL-separated key=value records.
func parseModinfo(data []byte) Modinfo {
	var mi Modinfo
	for _, rec := range bytes.Split(data, []byte{0}) {
		key, val, ok := strings.Cut(string(rec), "=")
		if !ok {
			continue
		}
		switch key {
		case "name":
			mi.Name = val
		case "depends":
			mi.Depends = splitList(val, ",")
		case "softdep":
			mi.SoftPre = append(mi.SoftPre, softPre(val)...)
		case "vermagic":
			mi.Vermagic = val
		}
	}
	return mi
}

// softPre returns the names after "pre:" in a softdep value such as
// "pre: crc32c post: foo".
func softPre(val string) []string {
	var out []string
	pre := false
	for _, w := range strings.Fields(val) {
		switch {
		case w == "pre:":
			pre = true
		case strings.HasSuffix(w, ":"):
			pre = false
		case pre:
			out = append(out, w)
		}
	}
	return out
}

func splitList(s, sep string) []string {
	var out []string
	for _, v := range strings.Split(s, sep) {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// normName maps a module or file name to the kernel's canonical form.
func normName(s string) string {
	return strings.ReplaceAll(strings.TrimSuffix(s, ".ko"), "-", "_")
}
