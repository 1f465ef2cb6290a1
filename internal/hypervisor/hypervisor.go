// Package hypervisor defines what the instances package needs from a virtual
// machine monitor, in hypervisor-neutral types. Backends live in
// subpackages (hypervisor/qemu). The interfaces are small on purpose:
// optional abilities are separate interfaces discovered by type assertion.
package hypervisor

import (
	"context"
	"errors"
	"io"
	"time"
)

// Type names a hypervisor as the API spells it.
type Type string

// The hypervisor types of the API. Only QEMU can run on hosts without real
// KVM; the others report why they are unavailable.
const (
	QEMU            Type = "qemu"
	QEMUMicroVM     Type = "qemu-microvm"
	CloudHypervisor Type = "cloud-hypervisor"
	Firecracker     Type = "firecracker"
	VZ              Type = "vz"
)

// Spec describes one VM to boot.
type Spec struct {
	// Name is used in the process title and logs (the instance ID).
	Name string
	// VCPUs and MemoryBytes size the guest.
	VCPUs       int
	MemoryBytes int64
	// MemoryFile, when set, backs guest RAM with this file, mapped shared,
	// so that a snapshot need not copy memory.
	MemoryFile string
	// Kernel, Initrd and Cmdline are the direct-boot triple.
	Kernel  string
	Initrd  string
	Cmdline string
	Disks   []Disk
	NICs    []NIC
	// ConsoleLog receives the guest's serial console (appended).
	ConsoleLog string
	// Ports are virtio-serial ports.
	Ports []Port
	// ControlSocket is the unix socket of the monitor.
	ControlSocket string
	// PIDFile receives the VMM's pid.
	PIDFile string
	// VMMLog receives the VMM process's own stdout and stderr.
	VMMLog string
	// Accel is "kvm" or "tcg".
	Accel string
	// TCGCodeMiB is the size of TCG's translated-code buffer in MiB; 0
	// keeps the hypervisor's default. Only under TCG.
	TCGCodeMiB int
	// MemoryPrivate maps MemoryFile privately (copy-on-write): the guest's
	// writes never reach the file. Clones of one memory snapshot use it.
	MemoryPrivate bool
	// Incoming starts the VMM waiting for a saved state (Restore sets it).
	Incoming bool
}

// DiskFormat is the format of a disk image file.
type DiskFormat string

// Disk formats.
const (
	FormatRaw   DiskFormat = "raw"
	FormatQCOW2 DiskFormat = "qcow2"
)

// Disk is a virtio block device.
type Disk struct {
	Path     string
	Format   DiskFormat
	ReadOnly bool
	// Serial lets the guest find the disk by role.
	Serial string
}

// NIC is a virtio network device on a host TAP.
type NIC struct {
	TAP string
	MAC string
}

// PortKind says where a virtio-serial port's host side goes.
type PortKind int

// Port kinds.
const (
	// PortFile appends everything the guest writes to a file.
	PortFile PortKind = iota
	// PortSocket is a unix socket the VMM listens on.
	PortSocket
)

// Port is a named virtio-serial port.
type Port struct {
	Name string
	Kind PortKind
	Path string
}

// Status is what the VMM says about its guest.
type Status string

// VM statuses.
const (
	StatusRunning  Status = "running"
	StatusPaused   Status = "paused"
	StatusShutdown Status = "shutdown"
	StatusOther    Status = "other"
)

// Snapshotter is a VM whose state can be saved; the VM's hypervisor then
// implements Restorer.
type Snapshotter interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// SaveState writes the device state (and any RAM not in a shared
	// memory file) to path, atomically. The VM should be paused.
	SaveState(ctx context.Context, path string) error
}

// UnsyncedSaver is a Snapshotter that can save without waiting for the
// state to reach the disk, so that a caller pausing a running guest can
// sync the file after resuming it.
type UnsyncedSaver interface {
	SaveStateUnsynced(ctx context.Context, path string) error
}

// Restorer starts a VM from a saved state. The VM is left paused.
// StartIncoming and LoadState split Restore in two, so that the VMM can
// start before the state exists (the old VM still running).
type Restorer interface {
	Restore(ctx context.Context, spec Spec, statePath string) (VM, error)
	StartIncoming(ctx context.Context, spec Spec) (VM, error)
}

// StateLoader is a VM started with StartIncoming.
type StateLoader interface {
	LoadState(ctx context.Context, statePath string) error
}

// Migrator moves a running guest into a VM started with StartIncoming,
// live, with the guest paused only for the final step; the stream is also
// written to tee. It returns how long the guest was paused.
type Migrator interface {
	MigrateTo(ctx context.Context, dst VM, tee io.Writer) (time.Duration, error)
}

// ErrNotRunning is returned when the VM process is gone.
var ErrNotRunning = errors.New("hypervisor: VM process is not running")

// Hypervisor starts VMs and finds VMs started earlier (possibly by another
// daemon process).
type Hypervisor interface {
	// Type returns the backend's type.
	Type() Type
	// Start boots a VM described by spec and returns once the VMM answers
	// on its control socket. The VM process does not depend on the caller:
	// it outlives the daemon.
	Start(ctx context.Context, spec Spec) (VM, error)
	// Attach finds the VM started with spec, from its pid file and control
	// socket. It returns ErrNotRunning when that VM no longer runs.
	Attach(ctx context.Context, spec Spec) (VM, error)
}

// VM is a running VM process.
type VM interface {
	// PID of the VMM process.
	PID() int
	// Status asks the VMM for the guest's status.
	Status(ctx context.Context) (Status, error)
	// RequestShutdown asks the guest to shut down gracefully. It does not wait.
	RequestShutdown(ctx context.Context) error
	// Kill ends the VMM at once.
	Kill() error
	// Wait blocks until the VMM process has exited or ctx ends.
	Wait(ctx context.Context) error
	// Exited reports whether the VMM process has exited.
	Exited() bool
}

// Stop asks the guest to shut down gracefully with request (nil means
// vm.RequestShutdown), waits up to timeout, and kills the VM if it is still
// running then (at once when timeout is 0). It returns once the process is
// gone, and whether it had to be killed.
func Stop(ctx context.Context, vm VM, timeout time.Duration, request func(context.Context) error) (killed bool, err error) {
	if request == nil {
		request = vm.RequestShutdown
	}
	if timeout > 0 {
		if err := request(ctx); err == nil {
			wctx, cancel := context.WithTimeout(ctx, timeout)
			err := vm.Wait(wctx)
			cancel()
			if err == nil {
				return false, nil
			}
		}
	}
	if err := vm.Kill(); err != nil {
		if !errors.Is(err, ErrNotRunning) {
			return false, err
		}
		return false, vm.Wait(ctx) // it ended by itself meanwhile
	}
	return true, vm.Wait(ctx)
}
