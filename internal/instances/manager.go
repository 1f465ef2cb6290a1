package instances

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
	"github.com/hypeman-vm/hypeman/internal/paths"
	"github.com/hypeman-vm/hypeman/internal/storage"
)

// Image is what an instance needs from a ready image.
type Image struct {
	// Name is the normalized reference; Digest the manifest digest.
	Name, Digest string
	RootfsPath   string
	Entrypoint   []string
	Cmd          []string
	Env          map[string]string
	WorkingDir   string
	User         string
	Platform     string
}

// ImageSource resolves image references for instances.
type ImageSource interface {
	// ForRun returns the ready image for ref, pulling it if needed and
	// waiting up to a short time. Errors carry API codes: not_found for an
	// unknown image, image_not_ready while it is still being pulled.
	ForRun(ctx context.Context, ref string) (Image, error)
	// ByDigest returns a ready image by manifest digest (for restarting an
	// instance pinned to it).
	ByDigest(ctx context.Context, digest string) (Image, error)
}

// Allocation is an instance's network identity on the host.
type Allocation struct {
	IP      netip.Addr
	Prefix  int
	Gateway netip.Addr
	MAC     string
	TAP     string
}

// Network allocates guest network identities and their TAP devices.
type Network interface {
	// Allocate reserves an address and MAC for the instance (the same ones
	// again while it holds them) and creates its TAP device, up.
	Allocate(ctx context.Context, instanceID string) (Allocation, error)
	// Reserve re-reserves a known allocation (found at startup).
	Reserve(ctx context.Context, instanceID string, a Allocation) error
	// Release deletes the TAP and frees the address and MAC.
	Release(ctx context.Context, instanceID string, a Allocation) error
	// AttachTAP creates the TAP a.TAP on the bridge for an allocation the
	// instance holds, up or down.
	AttachTAP(ctx context.Context, a Allocation, up bool) error
	// DetachTAP deletes a TAP; the address stays reserved.
	DetachTAP(ctx context.Context, tap string) error
	// SetTAPUp sets a TAP up or down.
	SetTAPUp(ctx context.Context, tap string, up bool) error
	// AltTAPName is the instance's second TAP name, for a VMM switch.
	AltTAPName(instanceID string) string
}

// BootFiles are the kernel and initramfs VMs boot.
type BootFiles struct {
	Kernel        string
	Initrd        string
	KernelVersion string
	// ModulesDir is where the kernel's modules were taken from (reported
	// by `hypeman setup`; VMs get their modules from the initramfs).
	ModulesDir string
	// Cmdline is appended to the kernel command line.
	Cmdline string
}

// Config configures the manager.
type Config struct {
	DefaultHypervisor  hypervisor.Type
	DefaultMemory      int64
	DefaultOverlay     int64
	DefaultVCPUs       int
	MaxVCPUs           int
	MaxMemory          int64
	MaxOverlay         int64
	StopTimeout        time.Duration
	DeleteStopTimeout  time.Duration
	Boot               BootFiles
	UnavailableReasons map[hypervisor.Type]string
	// FreezeMode is how forks and snapshots freeze files: "clone" (needs a
	// data dir with reflinks), "move", or "" to clone when the data dir
	// can.
	FreezeMode string
	// CrashAfter ("op/step") kills the daemon right after that step. A test
	// hook (HYPEMAN_TEST_CRASH_AFTER), for crash-consistency tests.
	CrashAfter string
}

// Manager runs instances. All methods are safe for concurrent use.
type Manager struct {
	cfg     Config
	paths   *paths.Paths
	images  ImageSource
	net     Network
	hvs     map[hypervisor.Type]hypervisor.Hypervisor
	storage *storage.Store
	log     *slog.Logger
	clone   bool // freeze by cloning (clone.go)

	mu      sync.Mutex // guards the fields below
	locks   map[string]*sync.Mutex
	vms     map[string]*runningVM
	agents  map[string]agentClient
	names   map[string]bool       // names reserved by creates in flight
	writing map[string]*writeBack // RAM files being written back (standby.go)
	changed chan struct{}         // closed and replaced on every state change
	closed  bool

	gcMu sync.Mutex // serializes garbage collection

	watchers sync.WaitGroup
	stop     chan struct{}
}

// runningVM is a VM this daemon watches.
type runningVM struct {
	vm      hypervisor.VM
	boot    int
	started bool // program_start seen
}

// New returns a manager. Call Recover before serving requests.
func New(cfg Config, p *paths.Paths, images ImageSource, nw Network,
	hvs map[hypervisor.Type]hypervisor.Hypervisor, log *slog.Logger) (*Manager, error) {
	if err := os.MkdirAll(p.InstancesDir(), 0o755); err != nil {
		return nil, fmt.Errorf("instances: %w", err)
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 5 * time.Second
	}
	if cfg.DeleteStopTimeout == 0 {
		cfg.DeleteStopTimeout = 2 * time.Second
	}
	clone, err := freezeByClone(cfg.FreezeMode, p.InstancesDir())
	if err != nil {
		return nil, err
	}
	log.Info("freezing files for forks and snapshots", "by", map[bool]string{true: "clone", false: "move"}[clone])
	return &Manager{
		cfg: cfg, paths: p, images: images, net: nw, hvs: hvs, clone: clone,
		storage: storage.New(p.OverlayTemplateDir()), log: log,
		locks: map[string]*sync.Mutex{}, vms: map[string]*runningVM{}, agents: map[string]agentClient{},
		writing: map[string]*writeBack{},
		names:   map[string]bool{}, changed: make(chan struct{}), stop: make(chan struct{}),
	}, nil
}

// freezeByClone decides how to freeze: mode "clone", "move", or "" for
// clone when dir's file system can.
func freezeByClone(mode, dir string) (bool, error) {
	switch mode {
	case "":
		return storage.SupportsClone(dir), nil
	case "move":
		return false, nil
	case "clone":
		if !storage.SupportsClone(dir) {
			return false, fmt.Errorf("instances: freeze mode clone: the file system of %s cannot clone files (FICLONE); use XFS with reflink=1 or btrfs", dir)
		}
		return true, nil
	}
	return false, fmt.Errorf("instances: unknown freeze mode %q (clone, move)", mode)
}

// Close stops watching VMs (they keep running) and waits for the watchers.
func (m *Manager) Close() {
	m.mu.Lock()
	if !m.closed {
		m.closed = true
		close(m.stop)
	}
	m.mu.Unlock()
	m.watchers.Wait()
}

// lock takes the per-instance lock and returns its release.
func (m *Manager) lock(id string) func() {
	m.mu.Lock()
	l, ok := m.locks[id]
	if !ok {
		l = &sync.Mutex{}
		m.locks[id] = l
	}
	m.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// notify wakes every waiter: some instance changed state.
func (m *Manager) notify() {
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

func (m *Manager) changes() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// Instance is an instance as the API shows it.
type Instance struct {
	Metadata
	State       State
	StateError  string
	HasSnapshot bool
}

// view derives the instance's current state from its metadata and VM.
func (m *Manager) view(meta *Metadata) Instance {
	inst := Instance{Metadata: *meta.clone()}
	m.mu.Lock()
	rv := m.vms[meta.ID]
	started := rv != nil && rv.started
	m.mu.Unlock()
	switch {
	case rv != nil && !rv.vm.Exited():
		inst.State = StateInitializing
		if started {
			inst.State = StateRunning
		}
	case hasManifest(m.paths.InstanceStandbyDir(meta.ID)):
		inst.State, inst.HasSnapshot = StateStandby, true
	default:
		inst.State = StateStopped
	}
	return inst
}

// List returns every instance, filtered by state and tags (AND) when given.
func (m *Manager) List(ctx context.Context, state State, tags map[string]string) ([]Instance, error) {
	ents, err := os.ReadDir(m.paths.InstancesDir())
	if err != nil {
		return nil, fmt.Errorf("instances: %w", err)
	}
	out := []Instance{}
	for _, e := range ents {
		inst, err := m.get(e.Name())
		if err != nil {
			continue
		}
		if (state == "" || inst.State == state) && matchTags(inst.Tags, tags) {
			out = append(out, inst)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

func matchTags(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

// get loads one instance by exact ID. Instances still being created are
// not visible.
func (m *Manager) get(id string) (Instance, error) {
	meta, err := loadMetadata(m.paths.InstanceMetadata(id))
	if errors.Is(err, os.ErrNotExist) {
		return Instance{}, errdefs.Newf(errdefs.ErrNotFound, "not_found", "instance %s not found", id)
	}
	if err != nil {
		return Instance{Metadata: Metadata{ID: id, Name: id}, State: StateUnknown, StateError: err.Error()}, nil
	}
	if meta.Creating {
		return Instance{}, errdefs.Newf(errdefs.ErrNotFound, "not_found", "instance %s not found", id)
	}
	return m.view(meta), nil
}

// Get returns the instance named by ref: an exact ID, an exact name, or a
// unique ID prefix (in that order).
func (m *Manager) Get(ctx context.Context, ref string) (Instance, error) {
	id, err := m.Resolve(ctx, ref)
	if err != nil {
		return Instance{}, err
	}
	return m.get(id)
}

// Resolve maps ref (ID, name or unique ID prefix) to an instance ID.
func (m *Manager) Resolve(ctx context.Context, ref string) (string, error) {
	notFound := errdefs.Newf(errdefs.ErrNotFound, "not_found", "resource not found")
	if ref == "" || strings.ContainsAny(ref, "/\\") || ref == "." || ref == ".." {
		return "", notFound
	}
	if _, err := os.Stat(m.paths.InstanceMetadata(ref)); err == nil {
		if _, err := m.get(ref); err == nil {
			return ref, nil
		}
	}
	all, err := m.List(ctx, "", nil)
	if err != nil {
		return "", err
	}
	var byName, byPrefix []string
	for _, inst := range all {
		if inst.Name == ref {
			byName = append(byName, inst.ID)
		}
		if strings.HasPrefix(inst.ID, ref) {
			byPrefix = append(byPrefix, inst.ID)
		}
	}
	for _, ids := range [][]string{byName, byPrefix} {
		switch len(ids) {
		case 0:
			continue
		case 1:
			return ids[0], nil
		default:
			return "", errdefs.Newf(errdefs.ErrAmbiguous, "ambiguous", "multiple resources match, use full ID")
		}
	}
	return "", notFound
}

// nameInUse reports whether an instance (or a create in flight) has name.
func (m *Manager) nameInUse(ctx context.Context, name string) (bool, error) {
	m.mu.Lock()
	reserved := m.names[name]
	m.mu.Unlock()
	if reserved {
		return true, nil
	}
	all, err := m.List(ctx, "", nil)
	if err != nil {
		return false, err
	}
	for _, inst := range all {
		if inst.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// reserveName claims name for a create in flight; the returned func
// releases the claim.
func (m *Manager) reserveName(ctx context.Context, name string) (func(), error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.names[name] {
		return nil, nameConflict(name)
	}
	m.mu.Unlock()
	inUse, err := m.nameInUse(ctx, name)
	m.mu.Lock()
	if err != nil {
		return nil, err
	}
	if inUse || m.names[name] {
		return nil, nameConflict(name)
	}
	m.names[name] = true
	return func() {
		m.mu.Lock()
		delete(m.names, name)
		m.mu.Unlock()
	}, nil
}

func nameConflict(name string) error {
	return errdefs.Newf(errdefs.ErrConflict, "name_conflict", "instance name '%s' already exists", name)
}
