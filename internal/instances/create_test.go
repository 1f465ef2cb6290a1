package instances

import (
	"context"
	"errors"
	"os"
	"reflect"
	"slices"
	"sync"
	"testing"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
)

func TestCreateSavesMetadataAndSpec(t *testing.T) {
	e := newEnv(t)
	inst, err := e.m.Create(context.Background(), CreateRequest{
		Name: "web", Image: "docker.io/library/test:latest", Tags: map[string]string{"team": "a"},
		Env: map[string]string{"A": "1"}, VCPUs: 2, Size: "128MB",
	})
	if err != nil {
		t.Fatal(err)
	}
	if inst.State != StateInitializing {
		t.Errorf("state %s, want Initializing", inst.State)
	}
	id := inst.ID

	meta, err := loadMetadata(e.paths.InstanceMetadata(id))
	if err != nil {
		t.Fatal(err)
	}
	if meta.Creating {
		t.Error("metadata saved with creating: true after a successful create")
	}
	if meta.Name != "web" || meta.ImageDigest != testDigest || meta.VCPUs != 2 || meta.Boot != 1 ||
		meta.StartedAt == nil || meta.StoppedAt != nil || meta.KernelVersion != "6.1.0-test" {
		t.Errorf("metadata: %+v", meta)
	}
	wantNet := NetworkMeta{Enabled: true, IP: "10.100.0.2", Prefix: 24, Gateway: "10.100.0.1",
		MAC: "02:00:00:00:00:01", TAP: "hmtap1"}
	if meta.Network != wantNet {
		t.Errorf("network %+v, want %+v", meta.Network, wantNet)
	}

	spec := e.hv.lastSpec(t)
	wantDisks := []hypervisor.Disk{
		{Path: e.images.rootfs, Format: hypervisor.FormatRaw, ReadOnly: true, Serial: "hm-rootfs"},
		{Path: e.paths.InstanceOverlay(id, "overlay-0.qcow2"), Format: hypervisor.FormatQCOW2, Serial: "hm-overlay"},
		{Path: e.paths.InstanceConfigDisk(id), Format: hypervisor.FormatRaw, ReadOnly: true, Serial: "hm-config"},
	}
	if !reflect.DeepEqual(spec.Disks, wantDisks) {
		t.Errorf("disks:\n got %+v\nwant %+v", spec.Disks, wantDisks)
	}
	if want := []hypervisor.NIC{{TAP: "hmtap1", MAC: "02:00:00:00:00:01"}}; !reflect.DeepEqual(spec.NICs, want) {
		t.Errorf("NICs %+v, want %+v", spec.NICs, want)
	}
	checks := []struct{ name, got, want string }{
		{"name", spec.Name, id},
		{"memory file", spec.MemoryFile, e.paths.InstanceMemory(id)},
		{"console log", spec.ConsoleLog, e.paths.InstanceAppLog(id)},
		{"control socket", spec.ControlSocket, e.paths.InstanceQMPSocket(id, 0)},
		{"pid file", spec.PIDFile, e.paths.InstancePIDFile(id, 0)},
		{"vmm log", spec.VMMLog, e.paths.InstanceVMMLog(id)},
		{"initrd", spec.Initrd, e.paths.InstanceInitrd(id)},
		{"kernel", spec.Kernel, "/boot/vmlinuz-test"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("spec %s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if spec.VCPUs != 2 || spec.MemoryBytes != 128<<20 {
		t.Errorf("spec VCPUs %d memory %d", spec.VCPUs, spec.MemoryBytes)
	}
	if want := []hypervisor.Port{
		{Name: "hypeman.events", Kind: hypervisor.PortFile, Path: e.paths.InstanceEvents(id)},
		{Name: "hypeman.agent", Kind: hypervisor.PortSocket, Path: e.paths.InstanceAgentSocket(id, 0)},
		{Name: "hypeman.bulk", Kind: hypervisor.PortSocket, Path: e.paths.InstanceBulkSocket(id, 0)},
	}; !reflect.DeepEqual(spec.Ports, want) {
		t.Errorf("ports %+v, want %+v", spec.Ports, want)
	}
	for _, f := range []string{e.paths.InstanceOverlay(id, "overlay-0.qcow2"), e.paths.InstanceConfigDisk(id),
		e.paths.InstanceMemory(id), e.paths.InstanceEvents(id), e.paths.InstanceInitrd(id)} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("boot file: %v", err)
		}
	}
	if st, err := os.Stat(e.paths.InstanceMemory(id)); err == nil && st.Size() != 128<<20 {
		t.Errorf("memory file size %d, want %d", st.Size(), 128<<20)
	}
}

func TestCreateWithoutNetwork(t *testing.T) {
	e := newEnv(t)
	off := false
	inst, err := e.m.Create(context.Background(), CreateRequest{Name: "solo", Image: "x", NetworkEnabled: &off})
	if err != nil {
		t.Fatal(err)
	}
	if inst.Network != (NetworkMeta{}) {
		t.Errorf("network %+v, want disabled and empty", inst.Network)
	}
	if spec := e.hv.lastSpec(t); len(spec.NICs) != 0 {
		t.Errorf("NICs %+v, want none", spec.NICs)
	}
}

func TestCreateFailureLeavesNothing(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name         string
		breakIt      func(e *env)
		wantReleased []string // TAPs the network must have released
	}{
		{"network allocation fails", func(e *env) { e.net.setAllocErr(boom) }, nil},
		{"VM start fails", func(e *env) { e.hv.setStartErr(boom) }, []string{"hmtap1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			tt.breakIt(e)
			_, err := e.m.Create(context.Background(), CreateRequest{Name: "web", Image: "img"})
			if !errors.Is(err, boom) {
				t.Fatalf("create: %v, want the step's error", err)
			}
			if dirs := e.instanceDirs(t); len(dirs) != 0 {
				t.Errorf("instance dirs left: %v", dirs)
			}
			if got := e.net.releasedTAPs(); !slices.Equal(got, tt.wantReleased) {
				t.Errorf("released TAPs %v, want %v", got, tt.wantReleased)
			}
			if n := e.net.live(); n != 0 {
				t.Errorf("%d network allocations left", n)
			}
			// The name is free again.
			e.net.setAllocErr(nil)
			e.hv.setStartErr(nil)
			if _, err := e.m.Create(context.Background(), CreateRequest{Name: "web", Image: "img"}); err != nil {
				t.Fatalf("create again with the same name: %v", err)
			}
		})
	}
}

func TestCreateValidation(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name  string
		req   CreateRequest
		class error
		code  string
	}{
		{"bad name", CreateRequest{Name: "Bad_Name", Image: "x"}, errdefs.ErrInvalidArgument, "invalid_name"},
		{"no image", CreateRequest{Name: "a"}, errdefs.ErrInvalidArgument, "invalid_request"},
		{"unknown image", CreateRequest{Name: "a", Image: "missing"}, errdefs.ErrNotFound, "not_found"},
		{"size too small", CreateRequest{Name: "a", Image: "x", Size: "1MB"}, errdefs.ErrInvalidArgument, "invalid_size"},
		{"size too big", CreateRequest{Name: "a", Image: "x", Size: "2GB"}, errdefs.ErrInvalidArgument, "invalid_size"},
		{"overlay garbage", CreateRequest{Name: "a", Image: "x", OverlaySize: "lots"}, errdefs.ErrInvalidArgument, "invalid_overlay_size"},
		{"hotplug", CreateRequest{Name: "a", Image: "x", HotplugSize: "1GB"}, errdefs.ErrInvalidArgument, "invalid_hotplug_size"},
		{"too many vcpus", CreateRequest{Name: "a", Image: "x", VCPUs: 9}, errdefs.ErrInvalidArgument, "invalid_request"},
		{"negative vcpus", CreateRequest{Name: "a", Image: "x", VCPUs: -1}, errdefs.ErrInvalidArgument, "invalid_request"},
		{"unknown hypervisor", CreateRequest{Name: "a", Image: "x", Hypervisor: "bochs"}, errdefs.ErrInvalidArgument, "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.m.Create(context.Background(), tt.req)
			wantCode(t, err, tt.class, tt.code)
		})
	}
	if dirs := e.instanceDirs(t); len(dirs) != 0 {
		t.Errorf("instance dirs left: %v", dirs)
	}
}

func TestCreateUnavailableHypervisor(t *testing.T) {
	e := newEnv(t)
	e.cfg.UnavailableReasons = map[hypervisor.Type]string{hypervisor.Firecracker: "needs KVM"}
	m := e.newManager(t)
	_, err := m.Create(context.Background(), CreateRequest{Name: "a", Image: "x", Hypervisor: "firecracker"})
	wantCode(t, err, errdefs.ErrInvalidArgument, "hypervisor_unavailable")
}

func TestCreateNameConflict(t *testing.T) {
	e := newEnv(t)
	e.create(t, "web")
	_, err := e.m.Create(context.Background(), CreateRequest{Name: "web", Image: "x"})
	wantCode(t, err, errdefs.ErrConflict, "name_conflict")
}

func TestConcurrentCreateSameName(t *testing.T) {
	e := newEnv(t)
	const n = 4
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.m.Create(context.Background(), CreateRequest{Name: "web", Image: "x"})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
			continue
		}
		wantCode(t, err, errdefs.ErrConflict, "name_conflict")
	}
	if ok != 1 || len(e.instanceDirs(t)) != 1 {
		t.Errorf("%d creates succeeded, %d dirs; want 1 and 1", ok, len(e.instanceDirs(t)))
	}
}
