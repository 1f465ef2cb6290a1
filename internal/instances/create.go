package instances

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"time"

	"github.com/hypeman-vm/hypeman/internal/cuid"
	"github.com/hypeman-vm/hypeman/internal/datasize"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
)

// CreateRequest asks for a new instance. Zero values mean "default".
type CreateRequest struct {
	Name        string
	Image       string
	Size        string // e.g. "1GB"
	HotplugSize string
	OverlaySize string
	VCPUs       int
	Env         map[string]string
	Tags        map[string]string
	// Entrypoint and Cmd override the image's when non-nil.
	Entrypoint []string
	Cmd        []string
	Hypervisor string
	// NetworkEnabled defaults to true when nil.
	NetworkEnabled *bool
	SkipGuestAgent bool
}

var namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// ValidName reports whether name is a valid instance name.
func ValidName(name string) bool { return len(name) <= 63 && namePattern.MatchString(name) }

// createOp carries the state shared by the steps of one create.
type createOp struct {
	m    *Manager
	req  CreateRequest
	meta *Metadata
	img  Image
}

// Create makes a new instance and boots it. It returns once the VM runs
// (the instance is usually Initializing then). On failure nothing of the
// instance is left.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (Instance, error) {
	start := time.Now()
	meta, err := m.validateCreate(req)
	if err != nil {
		return Instance{}, err
	}
	release, err := m.reserveName(ctx, req.Name)
	if err != nil {
		return Instance{}, err
	}
	defer release()
	img, err := m.images.ForRun(ctx, req.Image)
	if err != nil {
		return Instance{}, err
	}
	meta.ImageDigest, meta.Platform = img.Digest, img.Platform
	op := &createOp{m: m, req: req, meta: meta, img: img}
	unlock := m.lock(meta.ID)
	defer unlock()
	err = m.runSteps(ctx, "create", []step{
		{name: "make-dir", do: op.makeDir, undo: op.removeDir},
		{name: "create-overlay", do: op.createOverlay},
		{name: "allocate-network", do: op.allocateNetwork, undo: op.releaseNetwork},
		{name: "prepare-boot", do: op.prepareBoot},
		{name: "boot-vm", do: op.boot, undo: op.killVM},
		{name: "save-metadata", do: op.commit},
	})
	if err != nil {
		return Instance{}, err
	}
	m.opLog(meta.ID, "create", start, nil, fmt.Sprintf("image=%s digest=%s", req.Image, img.Digest))
	m.notify()
	return m.view(meta), nil
}

// validateCreate checks the request and returns the metadata it describes.
func (m *Manager) validateCreate(req CreateRequest) (*Metadata, error) {
	if !ValidName(req.Name) {
		return nil, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_name",
			"invalid name %q: lowercase letters, digits and dashes only, at most 63, not starting or ending with a dash", req.Name)
	}
	if req.Image == "" {
		return nil, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request", "image is required")
	}
	meta := &Metadata{
		ID: cuid.New(), Name: req.Name, Image: req.Image, CreatedAt: time.Now().UTC(),
		Env: cloneMap(req.Env), Tags: cloneMap(req.Tags), SkipGuestAgent: req.SkipGuestAgent,
		Entrypoint: req.Entrypoint, Cmd: req.Cmd, Creating: true, Overlay: "overlay-0.qcow2",
		Network: NetworkMeta{Enabled: req.NetworkEnabled == nil || *req.NetworkEnabled},
	}
	var err error
	if meta.MemoryBytes, err = m.sizeField("size", "invalid_size", req.Size, m.cfg.DefaultMemory, m.cfg.MaxMemory, 64<<20); err != nil {
		return nil, err
	}
	if meta.OverlayBytes, err = m.sizeField("overlay_size", "invalid_overlay_size", req.OverlaySize, m.cfg.DefaultOverlay, m.cfg.MaxOverlay, 16<<20); err != nil {
		return nil, err
	}
	if req.HotplugSize != "" {
		return nil, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_hotplug_size",
			"hotplug_size is not supported: memory hotplug is not implemented by this server")
	}
	if meta.VCPUs, err = m.vcpus(req.VCPUs); err != nil {
		return nil, err
	}
	if meta.Hypervisor, err = m.pickHypervisor(req.Hypervisor); err != nil {
		return nil, err
	}
	return meta, nil
}

func (m *Manager) sizeField(field, code, s string, def, max, min int64) (int64, error) {
	if s == "" {
		return def, nil
	}
	n, err := datasize.Parse(s)
	if err != nil {
		return 0, errdefs.Newf(errdefs.ErrInvalidArgument, code, "invalid %s %q: use a size such as 512MB or 2GB", field, s)
	}
	if n < min {
		return 0, errdefs.Newf(errdefs.ErrInvalidArgument, code, "%s %s is below the minimum of %s", field, s, datasize.Format(min))
	}
	if max > 0 && n > max {
		return 0, errdefs.Newf(errdefs.ErrInvalidArgument, code, "%s %s exceeds the per-instance limit of %s", field, s, datasize.Format(max))
	}
	return n, nil
}

func (m *Manager) vcpus(n int) (int, error) {
	if n == 0 {
		return m.cfg.DefaultVCPUs, nil
	}
	if n < 1 {
		return 0, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request", "vcpus must be at least 1, got %d", n)
	}
	if n > m.cfg.MaxVCPUs {
		return 0, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request",
			"vcpus %d exceeds the per-instance limit of %d", n, m.cfg.MaxVCPUs)
	}
	return n, nil
}

func (m *Manager) pickHypervisor(name string) (string, error) {
	t := hypervisor.Type(name)
	if name == "" {
		t = m.cfg.DefaultHypervisor
	}
	if _, ok := m.hvs[t]; ok {
		return string(t), nil
	}
	if reason, ok := m.cfg.UnavailableReasons[t]; ok {
		return "", errdefs.Newf(errdefs.ErrInvalidArgument, "hypervisor_unavailable",
			"hypervisor %s is not available on this host: %s", t, reason)
	}
	return "", errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request", "unknown hypervisor %q", name)
}

func (op *createOp) makeDir(ctx context.Context) error {
	id := op.meta.ID
	if err := os.MkdirAll(op.m.paths.InstanceLogsDir(id), 0o755); err != nil {
		return err
	}
	// Saved with Creating set: a daemon killed from here on rolls it back.
	return saveMetadata(op.m.paths.InstanceMetadata(id), op.meta)
}

func (op *createOp) removeDir(ctx context.Context) {
	_ = os.RemoveAll(op.m.paths.InstanceDir(op.meta.ID))
}

func (op *createOp) createOverlay(ctx context.Context) error {
	return op.m.storage.CreateOverlay(ctx, op.m.overlayPath(op.meta), op.meta.OverlayBytes)
}

func (op *createOp) allocateNetwork(ctx context.Context) error {
	return op.m.allocateNetwork(ctx, op.meta)
}

func (op *createOp) releaseNetwork(ctx context.Context) {
	_ = op.m.releaseNetwork(ctx, op.meta)
}

func (op *createOp) prepareBoot(ctx context.Context) error {
	op.meta.Boot++
	return op.m.prepareBoot(op.meta, op.img)
}

func (op *createOp) boot(ctx context.Context) error {
	return op.m.startVM(ctx, op.meta, op.img)
}

func (op *createOp) killVM(ctx context.Context) {
	op.m.killVM(ctx, op.meta.ID)
}

func (op *createOp) commit(ctx context.Context) error {
	op.meta.Creating = false
	return saveMetadata(op.m.paths.InstanceMetadata(op.meta.ID), op.meta)
}

// allocateNetwork gives meta an address, MAC and TAP when it has a network.
func (m *Manager) allocateNetwork(ctx context.Context, meta *Metadata) error {
	if !meta.Network.Enabled {
		return nil
	}
	a, err := m.net.Allocate(ctx, meta.ID)
	if err != nil {
		return err
	}
	meta.Network = NetworkMeta{Enabled: true, IP: a.IP.String(), Prefix: a.Prefix,
		Gateway: a.Gateway.String(), MAC: a.MAC, TAP: a.TAP}
	return nil
}

func allocationOf(n NetworkMeta) (Allocation, error) {
	ip, err := netip.ParseAddr(n.IP)
	if err != nil {
		return Allocation{}, fmt.Errorf("stored IP %q: %w", n.IP, err)
	}
	gw, _ := netip.ParseAddr(n.Gateway)
	return Allocation{IP: ip, Prefix: n.Prefix, Gateway: gw, MAC: n.MAC, TAP: n.TAP}, nil
}

// startVM records the boot in metadata and starts the VM.
func (m *Manager) startVM(ctx context.Context, meta *Metadata, img Image) error {
	now := time.Now().UTC()
	meta.StartedAt, meta.StoppedAt = &now, nil
	meta.ExitCode, meta.ExitMessage = nil, ""
	meta.ProgramStartedAt, meta.AgentReadyAt = nil, nil
	meta.KernelVersion = m.cfg.Boot.KernelVersion
	if hv, ok := m.hvs[hypervisor.Type(meta.Hypervisor)].(interface{ Accel() string }); ok {
		meta.Accel = hv.Accel()
	}
	// Persist before the VM exists, so a daemon killed right after the VM
	// starts knows to look for it.
	if err := saveMetadata(m.paths.InstanceMetadata(meta.ID), meta); err != nil {
		return err
	}
	return m.bootVM(ctx, meta, img)
}

// killVM ends the instance's VM at once and forgets it.
func (m *Manager) killVM(ctx context.Context, id string) {
	m.mu.Lock()
	rv := m.vms[id]
	m.mu.Unlock()
	if rv == nil {
		return
	}
	_ = rv.vm.Kill()
	_ = rv.vm.Wait(ctx)
	m.forgetVM(id, rv)
}
