package instances

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/hypeman-vm/hypeman/internal/agent/proto"
	"github.com/hypeman-vm/hypeman/internal/guest/vmconfig"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
	"github.com/hypeman-vm/hypeman/internal/storage"
)

// guestConfig is what the guest init reads from the config disk.
func (m *Manager) guestConfig(meta *Metadata, img Image) vmconfig.Config {
	c := vmconfig.Config{
		InstanceID:         meta.ID,
		Hostname:           meta.Name,
		Entrypoint:         img.Entrypoint,
		Cmd:                img.Cmd,
		Env:                mergeEnv(img.Env, meta.Env),
		WorkingDir:         img.WorkingDir,
		User:               img.User,
		StopTimeoutSeconds: int((m.cfg.StopTimeout + time.Second - 1) / time.Second),
		SkipGuestAgent:     meta.SkipGuestAgent,
	}
	// docker run semantics: an entrypoint override drops the image's cmd.
	if meta.Entrypoint != nil {
		c.Entrypoint = meta.Entrypoint
		c.Cmd = nil
	}
	if meta.Cmd != nil {
		c.Cmd = meta.Cmd
	}
	if n := meta.Network; n.Enabled && n.IP != "" {
		c.Network = &vmconfig.Network{MAC: n.MAC, IP: n.IP, PrefixLen: n.Prefix, Gateway: n.Gateway}
	}
	return c
}

// mergeEnv returns KEY=VALUE pairs, sorted, instance values overriding the
// image's.
func mergeEnv(image, instance map[string]string) []string {
	all := cloneMap(image)
	if all == nil {
		all = map[string]string{}
	}
	for k, v := range instance {
		all[k] = v
	}
	out := make([]string, 0, len(all))
	for k, v := range all {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// vmSpec describes the VM of meta for the hypervisor.
func (m *Manager) vmSpec(meta *Metadata, img Image) hypervisor.Spec {
	id, gen := meta.ID, meta.VMMGen
	spec := hypervisor.Spec{
		Name:        id,
		VCPUs:       meta.VCPUs,
		MemoryBytes: meta.MemoryBytes,
		MemoryFile:  m.paths.InstanceMemory(id),
		Kernel:      m.cfg.Boot.Kernel,
		Initrd:      m.paths.InstanceInitrd(id),
		Cmdline:     strings.TrimSpace("console=ttyS0 panic=-1 quiet loglevel=3 " + m.cfg.Boot.Cmdline),
		Disks: []hypervisor.Disk{
			{Path: img.RootfsPath, Format: hypervisor.FormatRaw, ReadOnly: true, Serial: vmconfig.SerialRootfs},
			{Path: m.overlayPath(meta), Format: hypervisor.FormatQCOW2, Serial: vmconfig.SerialOverlay},
			{Path: m.paths.InstanceConfigDisk(id), Format: hypervisor.FormatRaw, ReadOnly: true, Serial: vmconfig.SerialConfig},
		},
		ConsoleLog: m.paths.InstanceAppLog(id),
		Ports: []hypervisor.Port{
			{Name: vmconfig.PortEvents, Kind: hypervisor.PortFile, Path: m.paths.InstanceEvents(id)},
			{Name: vmconfig.PortAgent, Kind: hypervisor.PortSocket, Path: m.paths.InstanceAgentSocket(id, gen)},
			{Name: proto.PortBulk, Kind: hypervisor.PortSocket, Path: m.paths.InstanceBulkSocket(id, gen)},
		},
		ControlSocket: m.paths.InstanceQMPSocket(id, gen),
		PIDFile:       m.paths.InstancePIDFile(id, gen),
		VMMLog:        m.paths.InstanceVMMLog(id),
	}
	if n := meta.Network; n.Enabled && n.TAP != "" {
		spec.NICs = []hypervisor.NIC{{TAP: n.TAP, MAC: n.MAC}}
	}
	if meta.MemoryBase != "" {
		spec.MemoryFile, spec.MemoryPrivate = meta.MemoryBase, true
	}
	return spec
}

// writeConfigDisk writes the config disk of meta. A VM restored from
// memory never reads it, but its device must exist like the source's.
func (m *Manager) writeConfigDisk(ctx context.Context, meta *Metadata) error {
	img, err := m.images.ByDigest(ctx, meta.ImageDigest)
	if err != nil {
		return err
	}
	disk, err := vmconfig.Encode(m.guestConfig(meta, img))
	if err != nil {
		return err
	}
	return storage.WriteConfigDisk(m.paths.InstanceConfigDisk(meta.ID), disk)
}

// prepareBoot writes what a fresh boot needs: the config disk, an empty
// events file, the memory file, and a link to the initramfs (so the file
// stays while this instance may need it, whatever the boot package prunes).
func (m *Manager) prepareBoot(meta *Metadata, img Image) error {
	id := meta.ID
	disk, err := vmconfig.Encode(m.guestConfig(meta, img))
	if err != nil {
		return err
	}
	if err := storage.WriteConfigDisk(m.paths.InstanceConfigDisk(id), disk); err != nil {
		return err
	}
	if err := os.WriteFile(m.paths.InstanceEvents(id), nil, 0o644); err != nil {
		return fmt.Errorf("events file: %w", err)
	}
	if err := storage.CreateMemoryFile(m.paths.InstanceMemory(id), meta.MemoryBytes); err != nil {
		return err
	}
	return linkOrCopy(m.cfg.Boot.Initrd, m.paths.InstanceInitrd(id))
}

func linkOrCopy(src, dst string) error {
	_ = os.Remove(dst)
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("initrd: %w", err)
	}
	return os.WriteFile(dst, b, 0o644)
}

// bootVM starts the VM of meta and registers it for watching.
func (m *Manager) bootVM(ctx context.Context, meta *Metadata, img Image) error {
	hv, ok := m.hvs[hypervisor.Type(meta.Hypervisor)]
	if !ok {
		return fmt.Errorf("hypervisor %s is not available", meta.Hypervisor)
	}
	vm, err := hv.Start(ctx, m.vmSpec(meta, img))
	if err != nil {
		return err
	}
	m.watch(meta.ID, vm, meta.Boot, false)
	return nil
}
