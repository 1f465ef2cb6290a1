package boot

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseModinfo(t *testing.T) {
	data := []byte("softdep=pre: crc32c post: zz\x00license=GPL\x00depends=a,b-c,\x00name=my_mod\x00vermagic=6.1.0-1-x SMP\x00")
	mi := parseModinfo(data)
	if mi.Name != "my_mod" || !slices.Equal(mi.Depends, []string{"a", "b-c"}) ||
		!slices.Equal(mi.SoftPre, []string{"crc32c"}) || mi.Vermagic != "6.1.0-1-x SMP" {
		t.Fatalf("parseModinfo = %+v", mi)
	}
	if mi := parseModinfo([]byte("depends=\x00name=x\x00")); len(mi.Depends) != 0 {
		t.Fatalf("empty depends parsed as %q", mi.Depends)
	}
}

func TestReadModinfoRealModule(t *testing.T) {
	k := testKernel(t)
	mi, err := ReadModinfo(filepath.Join(k.ModulesDir, "kernel/drivers/net/virtio_net.ko"))
	if err != nil {
		t.Fatal(err)
	}
	if mi.Name != "virtio_net" {
		t.Errorf("name = %q", mi.Name)
	}
	for _, dep := range []string{"virtio", "virtio_ring", "net_failover"} {
		if !slices.Contains(mi.Depends, dep) {
			t.Errorf("depends %v lacks %s", mi.Depends, dep)
		}
	}
	if firstField(mi.Vermagic) != k.Version {
		t.Errorf("vermagic %q, kernel %q", mi.Vermagic, k.Version)
	}
	// The file uses '-', the module name '_'.
	mi, err = ReadModinfo(filepath.Join(k.ModulesDir, "kernel/drivers/char/hw_random/virtio-rng.ko"))
	if err != nil || mi.Name != "virtio_rng" {
		t.Fatalf("virtio-rng.ko: %+v, %v", mi, err)
	}
}

func names(mods []Module) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Name)
	}
	return out
}

// assertTopo checks that every module comes after all its non-built-in
// dependencies.
func assertTopo(t *testing.T, mods []Module) {
	t.Helper()
	pos := map[string]int{}
	for i, m := range mods {
		pos[m.Name] = i
	}
	for i, m := range mods {
		for _, d := range m.Depends {
			if j, ok := pos[normName(d)]; ok && j >= i {
				t.Errorf("%s (at %d) depends on %s (at %d)", m.Name, i, d, j)
			}
		}
	}
}

func TestResolveVirtioNet(t *testing.T) {
	k := testKernel(t)
	mods, err := ResolveModules(k.ModulesDir, []string{"virtio_net"})
	if err != nil {
		t.Fatal(err)
	}
	got := names(mods)
	t.Logf("virtio_net closure: %v", got)
	want := []string{"virtio_ring", "virtio", "failover", "net_failover", "virtio_net"}
	if !slices.Equal(got, want) {
		t.Fatalf("closure = %v, want %v", got, want)
	}
	assertTopo(t, mods)
}

func TestResolveGuestModules(t *testing.T) {
	k := testKernel(t)
	mods, err := ResolveModules(k.ModulesDir, GuestModules())
	if err != nil {
		t.Fatal(err)
	}
	got := names(mods)
	t.Logf("guest closure (%d): %v", len(got), got)
	// The order among independent modules is not part of the contract;
	// assertTopo checks the order that is.
	want := []string{
		"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
		"virtio_blk", "failover", "net_failover", "virtio_net", "virtio_console", "virtio_rng",
		"libcrc32c", "erofs", "overlay", "vsock", "vmw_vsock_virtio_transport_common",
		"vmw_vsock_virtio_transport",
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("closure = %v\nwant      %v", got, want)
	}
	assertTopo(t, mods)
}

// TestResolveOddTree checks the two fallbacks on a tree made of real
// modules: a module whose file is not named after it, and a dependency
// that modules.builtin says is built in.
func TestResolveOddTree(t *testing.T) {
	k := testKernel(t)
	dir := t.TempDir()
	cp := func(from, to string) {
		if err := copyFile(filepath.Join(k.ModulesDir, from), filepath.Join(dir, to)); err != nil {
			t.Fatal(err)
		}
	}
	cp("kernel/drivers/virtio/virtio_ring.ko", "kernel/x/renamed-ring.ko")
	cp("kernel/drivers/block/virtio_blk.ko", "kernel/drivers/block/virtio_blk.ko")
	builtin := "kernel/drivers/virtio/virtio.ko\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644); err != nil {
		t.Fatal(err)
	}
	mods, err := ResolveModules(dir, []string{"virtio-blk"})
	if err != nil {
		t.Fatal(err)
	}
	if got := names(mods); !slices.Equal(got, []string{"virtio_ring", "virtio_blk"}) {
		t.Fatalf("closure = %v", got)
	}
	if mods[0].File != "kernel/x/renamed-ring.ko" {
		t.Fatalf("virtio_ring file = %s", mods[0].File)
	}
	_, err = ResolveModules(dir, []string{"virtio_net"})
	if err == nil || !strings.Contains(err.Error(), "virtio_net") {
		t.Fatalf("missing module: err = %v", err)
	}
}
