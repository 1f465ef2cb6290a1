package instances

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/guest/events"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
	"github.com/hypeman-vm/hypeman/internal/paths"
)

// fakeHV is a hypervisor.Hypervisor whose VMs are fakeVMs. It records every
// Spec it was asked to start and finds VMs by pid file path, as the real
// backend does. It is shared between managers to simulate a daemon restart
// (the VMs outlive the manager).
type fakeHV struct {
	mu       sync.Mutex // guards the fields below
	startErr error
	specs    []hypervisor.Spec
	vms      map[string]*fakeVM // by pid file path
	nextPID  int
	// onStart, when set, configures each new VM before Start returns.
	onStart func(*fakeVM)
}

func newFakeHV() *fakeHV { return &fakeHV{vms: map[string]*fakeVM{}, nextPID: 1000} }

func (h *fakeHV) Type() hypervisor.Type { return hypervisor.QEMU }

func (h *fakeHV) Start(ctx context.Context, spec hypervisor.Spec) (hypervisor.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.specs = append(h.specs, spec)
	if h.startErr != nil {
		return nil, h.startErr
	}
	h.nextPID++
	vm := newFakeVM(h.nextPID, spec)
	if h.onStart != nil {
		h.onStart(vm)
	}
	h.vms[spec.PIDFile] = vm
	return vm, nil
}

func (h *fakeHV) Attach(ctx context.Context, spec hypervisor.Spec) (hypervisor.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	vm := h.vms[spec.PIDFile]
	if vm == nil || vm.Exited() {
		return nil, hypervisor.ErrNotRunning
	}
	return vm, nil
}

func (h *fakeHV) setStartErr(err error) {
	h.mu.Lock()
	h.startErr = err
	h.mu.Unlock()
}

func (h *fakeHV) lastSpec(t *testing.T) hypervisor.Spec {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.specs) == 0 {
		t.Fatal("hypervisor: no VM was started")
	}
	return h.specs[len(h.specs)-1]
}

// vm returns the VM started with pidFile, or nil.
func (h *fakeHV) vm(pidFile string) *fakeVM {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.vms[pidFile]
}

// addVM registers a running VM as if an earlier daemon had started it.
func (h *fakeHV) addVM(pidFile string) *fakeVM {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextPID++
	vm := newFakeVM(h.nextPID, hypervisor.Spec{PIDFile: pidFile})
	h.vms[pidFile] = vm
	return vm
}

// fakeVM is a VM that "runs" until exit is called (by the test, by Kill, or
// by RequestShutdown unless told to ignore it).
type fakeVM struct {
	pid  int
	spec hypervisor.Spec

	exitOnce sync.Once
	exited   chan struct{}

	mu             sync.Mutex // guards the fields below
	ignoreShutdown bool
	shutdownErr    error
	beforeExit     func() // runs on a graceful shutdown, before the exit
	shutdowns      int
	kills          int
}

func newFakeVM(pid int, spec hypervisor.Spec) *fakeVM {
	return &fakeVM{pid: pid, spec: spec, exited: make(chan struct{})}
}

func (v *fakeVM) PID() int { return v.pid }

// exit makes the VM process end.
func (v *fakeVM) exit() { v.exitOnce.Do(func() { close(v.exited) }) }

func (v *fakeVM) Exited() bool {
	select {
	case <-v.exited:
		return true
	default:
		return false
	}
}

func (v *fakeVM) Status(ctx context.Context) (hypervisor.Status, error) {
	if v.Exited() {
		return "", hypervisor.ErrNotRunning
	}
	return hypervisor.StatusRunning, nil
}

func (v *fakeVM) RequestShutdown(ctx context.Context) error {
	v.mu.Lock()
	v.shutdowns++
	ignore, err, hook := v.ignoreShutdown, v.shutdownErr, v.beforeExit
	v.mu.Unlock()
	if v.Exited() {
		return hypervisor.ErrNotRunning
	}
	if err != nil {
		return err
	}
	if !ignore {
		go func() {
			if hook != nil {
				hook()
			}
			v.exit()
		}()
	}
	return nil
}

func (v *fakeVM) Kill() error {
	if v.Exited() {
		return hypervisor.ErrNotRunning
	}
	v.mu.Lock()
	v.kills++
	v.mu.Unlock()
	v.exit()
	return nil
}

func (v *fakeVM) Wait(ctx context.Context) error {
	select {
	case <-v.exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (v *fakeVM) killCount() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.kills
}

func (v *fakeVM) set(fn func(v *fakeVM)) {
	v.mu.Lock()
	fn(v)
	v.mu.Unlock()
}

// fakeNet allocates deterministic addresses and records what it was asked.
type fakeNet struct {
	mu       sync.Mutex // guards the fields below
	n        int
	allocErr error
	allocs   map[string]Allocation // live allocations by instance ID
	released []Allocation
	reserved map[string]Allocation
}

func newFakeNet() *fakeNet {
	return &fakeNet{allocs: map[string]Allocation{}, reserved: map[string]Allocation{}}
}

func (f *fakeNet) Allocate(ctx context.Context, id string) (Allocation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.allocErr != nil {
		return Allocation{}, f.allocErr
	}
	f.n++
	a := Allocation{
		IP:      netip.AddrFrom4([4]byte{10, 100, 0, byte(1 + f.n)}),
		Prefix:  24,
		Gateway: netip.MustParseAddr("10.100.0.1"),
		MAC:     fmt.Sprintf("02:00:00:00:00:%02x", f.n),
		TAP:     fmt.Sprintf("hmtap%d", f.n),
	}
	f.allocs[id] = a
	return a, nil
}

func (f *fakeNet) Reserve(ctx context.Context, id string, a Allocation) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reserved[id] = a
	f.allocs[id] = a
	return nil
}

func (f *fakeNet) Release(ctx context.Context, id string, a Allocation) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, a)
	delete(f.allocs, id)
	return nil
}

func (f *fakeNet) setAllocErr(err error) {
	f.mu.Lock()
	f.allocErr = err
	f.mu.Unlock()
}

func (f *fakeNet) releasedTAPs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, a := range f.released {
		out = append(out, a.TAP)
	}
	return out
}

func (f *fakeNet) live() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.allocs)
}

// fakeImages knows images whose rootfs is a temp file.
type fakeImages struct {
	rootfs string
}

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func (f *fakeImages) image(ref string) Image {
	return Image{Name: ref, Digest: testDigest, RootfsPath: f.rootfs, Cmd: []string{"/bin/true"},
		Env: map[string]string{"PATH": "/bin"}, Platform: "linux/amd64"}
}

func (f *fakeImages) ForRun(ctx context.Context, ref string) (Image, error) {
	if ref == "missing" {
		return Image{}, errdefs.Newf(errdefs.ErrNotFound, "not_found", "image %s not found", ref)
	}
	return f.image(ref), nil
}

func (f *fakeImages) ByDigest(ctx context.Context, digest string) (Image, error) {
	if digest != testDigest {
		return Image{}, errdefs.Newf(errdefs.ErrNotFound, "not_found", "image %s not found", digest)
	}
	return f.image("docker.io/library/test:latest"), nil
}

// env is one manager over a fresh data dir with fakes.
type env struct {
	dir    string
	paths  *paths.Paths
	hv     *fakeHV
	net    *fakeNet
	images *fakeImages
	cfg    Config
	m      *Manager
}

// requireDiskTools skips tests that create overlays when the tools are absent.
func requireDiskTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (package qemu-utils / e2fsprogs): overlays cannot be created", tool)
		}
	}
}

// newEnv returns a manager over a new data dir. The dir is short (under
// /tmp) because paths.New refuses dirs whose socket paths exceed 107 bytes.
func newEnv(t *testing.T) *env {
	t.Helper()
	requireDiskTools(t)
	dir, err := os.MkdirTemp("/tmp", "hmu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p, err := paths.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(dir, "rootfs.erofs")
	initrd := filepath.Join(dir, "initrd.cpio")
	for _, f := range []string{rootfs, initrd} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e := &env{
		dir: dir, paths: p, hv: newFakeHV(), net: newFakeNet(), images: &fakeImages{rootfs: rootfs},
		cfg: Config{
			DefaultHypervisor: hypervisor.QEMU,
			DefaultMemory:     64 << 20, DefaultOverlay: 16 << 20,
			DefaultVCPUs: 1, MaxVCPUs: 4, MaxMemory: 1 << 30, MaxOverlay: 1 << 30,
			StopTimeout: 200 * time.Millisecond, DeleteStopTimeout: 200 * time.Millisecond,
			Boot: BootFiles{Kernel: "/boot/vmlinuz-test", Initrd: initrd, KernelVersion: "6.1.0-test"},
		},
	}
	e.m = e.newManager(t)
	return e
}

// newManager returns another manager over the env's data dir and fakes (a
// restarted daemon). It is closed at cleanup.
func (e *env) newManager(t *testing.T) *Manager {
	t.Helper()
	m, err := New(e.cfg, e.paths, e.images, e.net,
		map[hypervisor.Type]hypervisor.Hypervisor{hypervisor.QEMU: e.hv}, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// create makes an instance named name and fails the test on error.
func (e *env) create(t *testing.T, name string) Instance {
	t.Helper()
	// The fake VMs run no guest agent, so instances skip it: Running then
	// needs only program_start (agent_test.go covers the agent's part).
	inst, err := e.m.Create(context.Background(), CreateRequest{Name: name, Image: "docker.io/library/test:latest", SkipGuestAgent: true})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return inst
}

// vmOf returns the fake VM of the instance's current boot.
func (e *env) vmOf(t *testing.T, id string) *fakeVM {
	t.Helper()
	vm := e.hv.vm(e.paths.InstancePIDFile(id, 0))
	if vm == nil {
		t.Fatalf("no VM for %s", id)
	}
	return vm
}

// appendEvent appends a guest event to the instance's events.log, as QEMU
// does for the guest.
func (e *env) appendEvent(t *testing.T, id string, ev events.Event) {
	t.Helper()
	f, err := os.OpenFile(e.paths.InstanceEvents(id), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	if _, err := f.Write(events.Marshal(ev)); err != nil {
		t.Fatal(err)
	}
}

func exitEvent(code int, msg string) events.Event {
	return events.Event{Type: events.TypeExit, ExitCode: &code, Message: msg}
}

// waitState polls until the instance is in want (or fails after 5 s).
func (e *env) waitState(t *testing.T, ref string, want State) Instance {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		inst, err := e.m.Get(context.Background(), ref)
		if err == nil && inst.State == want {
			return inst
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %s: state %q (err %v), want %s", ref, inst.State, err, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// instanceDirs lists the instance dirs in the data dir.
func (e *env) instanceDirs(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(e.paths.InstancesDir())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range ents {
		out = append(out, d.Name())
	}
	return out
}

// writeMeta writes metadata for id directly, as a crafted instance dir.
func (e *env) writeMeta(t *testing.T, meta *Metadata) {
	t.Helper()
	if err := os.MkdirAll(e.paths.InstanceLogsDir(meta.ID), 0o755); err != nil {
		t.Fatal(err)
	}
	if meta.CreatedAt.IsZero() {
		meta.CreatedAt = time.Now().UTC()
	}
	if meta.Hypervisor == "" {
		meta.Hypervisor = string(hypervisor.QEMU)
	}
	if err := saveMetadata(e.paths.InstanceMetadata(meta.ID), meta); err != nil {
		t.Fatal(err)
	}
}

func wantCode(t *testing.T, err error, class error, code string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %s", code)
	}
	if !errors.Is(err, class) || errdefs.Code(err) != code {
		t.Fatalf("got %v (code %q), want class %v code %q", err, errdefs.Code(err), class, code)
	}
}

// markStarted makes the guest report program_start and waits until the
// watcher has seen it (under m.mu, where the watcher records it).
func (e *env) markStarted(t *testing.T, id string) {
	t.Helper()
	// Order this goroutine's earlier unlocked reads of rv.started before
	// the watcher's write, which takes m.mu after the event exists.
	e.m.mu.Lock()
	e.m.mu.Unlock()
	e.appendEvent(t, id, events.Event{Type: events.TypeProgramStart, PID: 42})
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.m.mu.Lock()
		rv := e.m.vms[id]
		started := rv != nil && rv.started
		e.m.mu.Unlock()
		if started {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("watcher never saw program_start of %s", id)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (f *fakeNet) AttachTAP(ctx context.Context, a Allocation, up bool) error { return nil }
func (f *fakeNet) DetachTAP(ctx context.Context, tap string) error            { return nil }
func (f *fakeNet) SetTAPUp(ctx context.Context, tap string, up bool) error    { return nil }
func (f *fakeNet) AltTAPName(id string) string                                { return "hmalt" + id[:8] }
