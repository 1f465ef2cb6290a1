package boot

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// GuestModules returns the modules the guest needs, by kernel name: PCI
// transport, block, network, console, entropy, the root file system stack
// (erofs under overlay) and vsock. Their dependencies are found by
// ResolveModules; the order here is only the order of the roots.
func GuestModules() []string {
	return []string{
		"virtio_pci",
		"virtio_blk",
		"virtio_net",
		"virtio_console",
		"virtio_rng",
		"erofs",
		"overlay",
		"vsock",
		"vmw_vsock_virtio_transport_common",
		"vmw_vsock_virtio_transport",
	}
}

// Module is one loadable module of a resolved set.
type Module struct {
	// Name is the kernel's name for the module (with '_').
	Name string
	// File is the module's path relative to the modules directory, with
	// '/' separators, for example "kernel/drivers/net/virtio_net.ko".
	File string
	// Depends are the names of the modules it needs loaded first.
	Depends []string
}

// moduleTree indexes one modules directory (the layout of
// /lib/modules/<version>: kernel/... plus modules.builtin).
type moduleTree struct {
	dir     string
	builtin map[string]bool
	byFile  map[string]string // normName(file base) -> relative path
	byName  map[string]string // modinfo name -> relative path; built on demand
	info    map[string]Modinfo
}

func openModuleTree(dir string) (*moduleTree, error) {
	t := &moduleTree{dir: dir, byFile: map[string]string{}, info: map[string]Modinfo{}}
	var err error
	if t.builtin, err = readBuiltin(filepath.Join(dir, "modules.builtin")); err != nil {
		return nil, err
	}
	err = filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(dir, p)
			t.byFile[normName(d.Name())] = filepath.ToSlash(rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boot: index modules in %s: %w", dir, err)
	}
	return t, nil
}

// readBuiltin reads modules.builtin: one relative .ko path per line.
func readBuiltin(file string) (map[string]bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			out[normName(path.Base(line))] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("boot: read %s: %w", file, err)
	}
	return out, nil
}

// lookup finds the module called name. It tries the file named after the
// module first (true for nearly every module) and falls back to reading the
// .modinfo of every module in the tree, unless fileOnly is set.
func (t *moduleTree) lookup(name string, fileOnly bool) (string, Modinfo, error) {
	if rel, ok := t.byFile[name]; ok {
		mi, err := t.modinfo(rel)
		if err != nil {
			return "", Modinfo{}, err
		}
		if mi.Name == name {
			return rel, mi, nil
		}
	}
	if fileOnly {
		return "", Modinfo{}, errNoModule
	}
	if err := t.indexNames(); err != nil {
		return "", Modinfo{}, err
	}
	rel, ok := t.byName[name]
	if !ok {
		return "", Modinfo{}, errNoModule
	}
	mi, err := t.modinfo(rel)
	return rel, mi, err
}

var errNoModule = errors.New("no such module")

func (t *moduleTree) modinfo(rel string) (Modinfo, error) {
	if mi, ok := t.info[rel]; ok {
		return mi, nil
	}
	mi, err := ReadModinfo(filepath.Join(t.dir, filepath.FromSlash(rel)))
	if err != nil {
		return Modinfo{}, err
	}
	t.info[rel] = mi
	return mi, nil
}

func (t *moduleTree) indexNames() error {
	if t.byName != nil {
		return nil
	}
	t.byName = map[string]string{}
	for _, rel := range t.byFile {
		mi, err := t.modinfo(rel)
		if err != nil {
			return err
		}
		t.byName[mi.Name] = rel
	}
	return nil
}

// ResolveModules returns the closure of want over the modules in dir
// (a /lib/modules/<version> layout), dependencies before their users.
// Modules built into the kernel (modules.builtin) are left out. A wanted
// module that is neither built in nor present is an error; a soft
// dependency that cannot be found is ignored, as modprobe does.
func ResolveModules(dir string, want []string) ([]Module, error) {
	t, err := openModuleTree(dir)
	if err != nil {
		return nil, err
	}
	r := resolver{tree: t, state: map[string]int{}}
	for _, name := range want {
		if err := r.visit(normName(name), true, nil); err != nil {
			return nil, err
		}
	}
	return r.order, nil
}

const (
	visiting = 1
	visited  = 2
)

// resolver is a depth-first topological sort: a module is appended to order
// after everything it depends on.
type resolver struct {
	tree  *moduleTree
	state map[string]int
	order []Module
}

func (r *resolver) visit(name string, required bool, chain []string) error {
	switch r.state[name] {
	case visited:
		return nil
	case visiting:
		return fmt.Errorf("boot: module dependency cycle: %s -> %s: %w",
			strings.Join(chain, " -> "), name, errdefs.ErrInternal)
	}
	if r.tree.builtin[name] {
		r.state[name] = visited
		return nil
	}
	// Soft dependencies are often aliases ("crc32c"), which only a full
	// alias index could resolve; look them up by file name only.
	rel, mi, err := r.tree.lookup(name, !required)
	if errors.Is(err, errNoModule) {
		if !required {
			r.state[name] = visited
			return nil
		}
		return fmt.Errorf("boot: module %s (needed by %v) is neither built in nor in %s: %w",
			name, chain, r.tree.dir, errdefs.ErrNotFound)
	}
	if err != nil {
		return err
	}
	r.state[name] = visiting
	chain = append(chain, name)
	for _, soft := range mi.SoftPre {
		if err := r.visit(normName(soft), false, chain); err != nil {
			return err
		}
	}
	for _, dep := range mi.Depends {
		if err := r.visit(normName(dep), true, chain); err != nil {
			return err
		}
	}
	r.state[name] = visited
	r.order = append(r.order, Module{Name: name, File: rel, Depends: mi.Depends})
	return nil
}
