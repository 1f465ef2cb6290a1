// Package daemon is the composition root of `hypeman serve`: it builds every
// part from the configuration, in order, recovers the state of a previous
// run, and serves the API until its context ends. Nothing else wires parts
// together.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime/debug"
	"time"

	"github.com/hypeman-vm/hypeman/internal/api"
	"github.com/hypeman-vm/hypeman/internal/auth"
	"github.com/hypeman-vm/hypeman/internal/boot"
	"github.com/hypeman-vm/hypeman/internal/config"
	"github.com/hypeman-vm/hypeman/internal/guestbin"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
	"github.com/hypeman-vm/hypeman/internal/hypervisor/qemu"
	"github.com/hypeman-vm/hypeman/internal/images"
	"github.com/hypeman-vm/hypeman/internal/instances"
	"github.com/hypeman-vm/hypeman/internal/network"
	"github.com/hypeman-vm/hypeman/internal/paths"
	"github.com/hypeman-vm/hypeman/internal/registry"
)

// Daemon is a running hypeman server.
type Daemon struct {
	cfg       config.Config
	log       *slog.Logger
	paths     *paths.Paths
	images    *images.Manager
	net       *network.Manager
	instances *instances.Manager
	handler   http.Handler

	capabilities api.Capabilities
}

// New builds the daemon: boot files, accelerator probe, network, images,
// instances (recovering VMs that kept running), and the HTTP handler.
func New(ctx context.Context, cfg config.Config, log *slog.Logger) (*Daemon, error) {
	d := &Daemon{cfg: cfg, log: log}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"paths", d.initPaths},
		{"network", d.initNetwork},
		{"images", d.initImages},
		{"instances", d.initInstances},
		{"api", d.initAPI},
	}
	for _, s := range steps {
		t := time.Now()
		if err := s.fn(ctx); err != nil {
			d.Close()
			return nil, fmt.Errorf("daemon: %s: %w", s.name, err)
		}
		log.Debug("daemon init step", "step", s.name, "took", time.Since(t).Round(time.Millisecond))
	}
	return d, nil
}

func (d *Daemon) initPaths(ctx context.Context) error {
	p, err := paths.New(d.cfg.DataDir)
	d.paths = p
	return err
}

func (d *Daemon) initNetwork(ctx context.Context) error {
	subnet, err := netip.ParsePrefix(d.cfg.Network.Subnet)
	if err != nil {
		return err
	}
	d.net, err = network.New(network.Config{BridgeName: d.cfg.Network.Bridge, Subnet: subnet}, d.log)
	if err != nil {
		return err
	}
	return d.net.EnsureBridge(ctx)
}

func (d *Daemon) initImages(ctx context.Context) error {
	var err error
	d.images, err = images.New(images.Config{}, d.paths, d.log.With("component", "images"))
	return err
}

// Setup installs the guest kernel and builds the initramfs in the data dir
// (what `hypeman setup` does; the daemon does the same on start).
func Setup(ctx context.Context, cfg config.Config, log *slog.Logger) (instances.BootFiles, error) {
	d := &Daemon{cfg: cfg, log: log}
	if err := d.initPaths(ctx); err != nil {
		return instances.BootFiles{}, err
	}
	return d.bootFiles(ctx)
}

// bootFiles makes sure the kernel and the initramfs exist.
func (d *Daemon) bootFiles(ctx context.Context) (instances.BootFiles, error) {
	var opts []boot.Option
	if d.cfg.Kernel.Vmlinuz != "" {
		opts = append(opts, boot.WithOverride(boot.KernelOverride{Vmlinuz: d.cfg.Kernel.Vmlinuz, ModulesDir: d.cfg.Kernel.ModulesDir}))
	}
	k, err := boot.EnsureKernel(ctx, d.paths, d.log, opts...)
	if err != nil {
		return instances.BootFiles{}, fmt.Errorf("%w (run `hypeman setup` where Debian's archive is reachable, or set kernel.vmlinuz)", err)
	}
	guest, err := guestbin.Binary()
	if err != nil {
		return instances.BootFiles{}, err
	}
	initrd, err := boot.BuildInitrd(ctx, d.paths, k, guest)
	if err != nil {
		return instances.BootFiles{}, err
	}
	return instances.BootFiles{Kernel: k.Vmlinuz, Initrd: initrd, KernelVersion: k.Version, ModulesDir: k.ModulesDir}, nil
}

// accel picks the accelerator: the configured one, or what a probe VM shows.
func (d *Daemon) accel(ctx context.Context, bf instances.BootFiles) (string, string) {
	switch d.cfg.Hypervisor.Accel {
	case "kvm", "tcg":
		return d.cfg.Hypervisor.Accel, "set in configuration"
	}
	r := qemu.Probe(ctx, d.cfg.Hypervisor.QEMUBinary, bf.Kernel, bf.Initrd)
	d.log.Info("accelerator probe", "accel", r.Accel, "detail", r.Detail)
	return r.Accel, r.Detail
}

// unavailable says why each hypervisor other than QEMU cannot run here.
var unavailable = map[hypervisor.Type]string{
	hypervisor.CloudHypervisor: "cloud-hypervisor is not installed (not packaged for this OS) and needs working KVM",
	hypervisor.Firecracker:     "firecracker is not installed (not packaged for this OS) and needs working KVM",
	hypervisor.VZ:              "vz (Apple Virtualization.framework) runs only on macOS",
	hypervisor.QEMUMicroVM:     "qemu-microvm is not implemented by this server; use qemu",
}

func (d *Daemon) initInstances(ctx context.Context) error {
	bf, err := d.bootFiles(ctx)
	if err != nil {
		return err
	}
	accel, _ := d.accel(ctx, bf)
	q := qemu.New(qemu.Config{Binary: d.cfg.Hypervisor.QEMUBinary, Accel: accel,
		TCGCodeMiB: int(config.Bytes(d.cfg.Hypervisor.TCGCodeSize) >> 20)}, d.log)
	d.capabilities = api.Capabilities{
		Version: version(), DefaultRuntime: d.cfg.Hypervisor.Default,
		Gateway: d.net.Gateway().String(), Subnet: d.net.Subnet().String(),
	}
	d.capabilities.Runtimes = runtimes(accel)
	d.instances, err = instances.New(instances.Config{
		DefaultHypervisor:  hypervisor.Type(d.cfg.Hypervisor.Default),
		DefaultMemory:      config.Bytes(d.cfg.Defaults.Size),
		DefaultOverlay:     config.Bytes(d.cfg.Defaults.OverlaySize),
		DefaultVCPUs:       d.cfg.Defaults.VCPUs,
		MaxVCPUs:           d.cfg.Limits.MaxVCPUs,
		MaxMemory:          config.Bytes(d.cfg.Limits.MaxMemory),
		MaxOverlay:         config.Bytes(d.cfg.Limits.MaxOverlaySize),
		StopTimeout:        config.Duration(d.cfg.Defaults.StopTimeout),
		Boot:               bf,
		UnavailableReasons: unavailable,
		FreezeMode:         d.cfg.FreezeMode,
		CrashAfter:         os.Getenv("HYPEMAN_TEST_CRASH_AFTER"), // test hook: see instances.Config
	}, d.paths, imageSource{images: d.images, pullWait: 5 * time.Second}, netAdapter{net: d.net},
		map[hypervisor.Type]hypervisor.Hypervisor{hypervisor.QEMU: q}, d.log.With("component", "instances"))
	if err != nil {
		return err
	}
	keep, err := d.instances.Recover(ctx)
	if err != nil {
		return err
	}
	return d.net.CleanupOrphans(ctx, keep)
}

func runtimes(accel string) []api.Runtime {
	out := []api.Runtime{}
	for _, t := range []hypervisor.Type{hypervisor.CloudHypervisor, hypervisor.Firecracker, hypervisor.QEMU, hypervisor.QEMUMicroVM, hypervisor.VZ} {
		rt := api.Runtime{Name: string(t), Features: []string{}}
		if t == hypervisor.QEMU {
			rt.Available, rt.Accelerator = true, accel
			rt.Features = []string{"fork", "pause", "snapshots", "standby"}
		} else {
			rt.Reason = unavailable[t]
		}
		out = append(out, rt)
	}
	return out
}

func (d *Daemon) initAPI(ctx context.Context) error {
	secret, err := d.cfg.ResolveSecret(true)
	if err != nil {
		return err
	}
	verifier := auth.NewVerifier(secret)
	reg := registry.New(d.images, func(r *http.Request) bool {
		_, err := verifier.VerifyRequest(r)
		return err == nil
	}, d.log.With("component", "registry"))
	d.handler, err = api.New(api.Deps{
		Instances: d.instances, Images: d.images, Registry: reg, Verifier: verifier,
		Capabilities: d.capabilities, Log: d.log.With("component", "api"),
		TAPStats: d.net.TAPStats,
	})
	return err
}

// Handler is the daemon's HTTP handler.
func (d *Daemon) Handler() http.Handler { return d.handler }

// Serve listens on the configured address until ctx ends, then shuts the
// HTTP server down. VMs keep running.
func (d *Daemon) Serve(ctx context.Context) error {
	ln, err := net.Listen("tcp", d.cfg.Listen)
	if err != nil {
		return fmt.Errorf("daemon: listen: %w", err)
	}
	srv := &http.Server{Handler: d.handler, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	d.log.Info("hypeman serving", "addr", ln.Addr().String(), "data_dir", d.cfg.DataDir)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Close releases the daemon's resources. Running VMs are left running.
func (d *Daemon) Close() {
	if d.instances != nil {
		d.instances.Close()
	}
	if d.images != nil {
		d.images.Close()
	}
	if d.net != nil {
		_ = d.net.Close()
	}
}

func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "unknown"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}
