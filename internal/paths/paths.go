// Package paths is the single source of truth for the layout of hypeman's
// data directory. Every on-disk path the daemon uses is built here; no other
// package joins path elements under the data dir by hand.
//
// Layout (DataDir is /var/lib/hypeman by default):
//
//	system/
//	  kernel/<version>/vmlinuz            guest kernel (Debian cloud kernel)
//	  kernel/<version>/modules/           the kernel's modules tree (only what we need)
//	  initrd/<hash>.cpio                  initramfs: modules + hypeman-guest init
//	  overlay-templates/<bytes>.ext4      empty ext4 file systems, one per overlay size
//	images/
//	  oci/                                OCI image layout: every blob pulled or pushed
//	  digests/<hex>/metadata.json         one image (by manifest digest): status, config
//	  digests/<hex>/rootfs.erofs          its root file system, read-only, shared
//	  refs.json                           normalized reference -> manifest digest
//	instances/<id>/
//	  metadata.json                       instance metadata (schema-versioned)
//	  overlay.qcow2                       writable overlay disk (qcow2 on an ext4 template)
//	  config.img                          config disk: JSON read by the guest init
//	  mem                                 guest RAM (memory-backend-file, share=on)
//	  qmp.sock                            QEMU monitor (QMP)
//	  agent.sock                          guest agent channel (virtio-serial)
//	  events.log                          guest events (boot markers, exit status)
//	  qemu.pid                            QEMU's pid file
//	  logs/app.log                        guest console (the program's output)
//	  logs/vmm.log                        QEMU's own stdout and stderr
//	  logs/hypeman.log                    this instance's operations log
//
// Paths of unix sockets must stay under 108 bytes (sun_path); New rejects data
// dirs too long for that.
package paths

import (
	"fmt"
	"path/filepath"
)

// maxSocketPath is the longest unix socket path the kernel accepts, minus NUL.
const maxSocketPath = 107

// idLen is the length of instance IDs (CUID2).
const idLen = 24

// Paths builds every path under one data directory.
type Paths struct {
	root string
}

// New returns the layout rooted at dataDir, which must be absolute.
func New(dataDir string) (*Paths, error) {
	if !filepath.IsAbs(dataDir) {
		return nil, fmt.Errorf("paths: data dir %q is not absolute", dataDir)
	}
	p := &Paths{root: filepath.Clean(dataDir)}
	probe := p.InstanceQMPSocket(fmt.Sprintf("%0*d", idLen, 0), 99)
	if len(probe) > maxSocketPath {
		return nil, fmt.Errorf("paths: data dir %q is too long: socket paths under it would exceed %d bytes", dataDir, maxSocketPath)
	}
	return p, nil
}

// Root is the data directory itself.
func (p *Paths) Root() string { return p.root }

// System files.

func (p *Paths) SystemDir() string { return filepath.Join(p.root, "system") }
func (p *Paths) KernelDir(version string) string {
	return filepath.Join(p.root, "system", "kernel", version)
}
func (p *Paths) InitrdDir() string { return filepath.Join(p.root, "system", "initrd") }
func (p *Paths) OverlayTemplateDir() string {
	return filepath.Join(p.root, "system", "overlay-templates")
}

// Images.

func (p *Paths) ImagesDir() string          { return filepath.Join(p.root, "images") }
func (p *Paths) OCILayoutDir() string       { return filepath.Join(p.root, "images", "oci") }
func (p *Paths) ImageRefsFile() string      { return filepath.Join(p.root, "images", "refs.json") }
func (p *Paths) ImageDigestsDir() string    { return filepath.Join(p.root, "images", "digests") }
func (p *Paths) ImageDir(hex string) string { return filepath.Join(p.ImageDigestsDir(), hex) }
func (p *Paths) ImageMetadata(hex string) string {
	return filepath.Join(p.ImageDir(hex), "metadata.json")
}
func (p *Paths) ImageRootfs(hex string) string { return filepath.Join(p.ImageDir(hex), "rootfs.erofs") }

// Instances.

func (p *Paths) InstancesDir() string         { return filepath.Join(p.root, "instances") }
func (p *Paths) InstanceDir(id string) string { return filepath.Join(p.root, "instances", id) }
func (p *Paths) InstanceMetadata(id string) string {
	return filepath.Join(p.InstanceDir(id), "metadata.json")
}

// InstanceOverlay is the overlay disk called name in the instance dir.
func (p *Paths) InstanceOverlay(id, name string) string {
	return filepath.Join(p.InstanceDir(id), name)
}
func (p *Paths) InstanceConfigDisk(id string) string {
	return filepath.Join(p.InstanceDir(id), "config.img")
}
func (p *Paths) InstanceMemory(id string) string { return filepath.Join(p.InstanceDir(id), "mem") }
func (p *Paths) InstanceInitrd(id string) string {
	return filepath.Join(p.InstanceDir(id), "initrd.cpio")
}

// VMM files carry a generation, so that a new VMM can start beside the
// old one (a running instance moving to a new QEMU process).
func (p *Paths) InstanceQMPSocket(id string, gen int) string {
	return filepath.Join(p.InstanceDir(id), fmt.Sprintf("qmp-%d.sock", gen))
}
func (p *Paths) InstanceAgentSocket(id string, gen int) string {
	return filepath.Join(p.InstanceDir(id), fmt.Sprintf("agent-%d.sock", gen))
}
func (p *Paths) InstanceBulkSocket(id string, gen int) string {
	return filepath.Join(p.InstanceDir(id), fmt.Sprintf("bulk-%d.sock", gen))
}
func (p *Paths) InstancePIDFile(id string, gen int) string {
	return filepath.Join(p.InstanceDir(id), fmt.Sprintf("qemu-%d.pid", gen))
}
func (p *Paths) InstanceStandbyDir(id string) string {
	return filepath.Join(p.InstanceDir(id), "standby")
}
func (p *Paths) InstanceEvents(id string) string {
	return filepath.Join(p.InstanceDir(id), "events.log")
}
func (p *Paths) InstanceLogsDir(id string) string { return filepath.Join(p.InstanceDir(id), "logs") }
func (p *Paths) InstanceAppLog(id string) string {
	return filepath.Join(p.InstanceLogsDir(id), "app.log")
}
func (p *Paths) InstanceVMMLog(id string) string {
	return filepath.Join(p.InstanceLogsDir(id), "vmm.log")
}
func (p *Paths) InstanceHypemanLog(id string) string {
	return filepath.Join(p.InstanceLogsDir(id), "hypeman.log")
}

// Shared frozen files and stored snapshots.

func (p *Paths) LayersDir() string            { return filepath.Join(p.root, "layers") }
func (p *Paths) Layer(id string) string       { return filepath.Join(p.root, "layers", id+".qcow2") }
func (p *Paths) MemoryDir() string            { return filepath.Join(p.root, "memory") }
func (p *Paths) MemoryBase(id string) string  { return filepath.Join(p.root, "memory", id+".mem") }
func (p *Paths) SnapshotsDir() string         { return filepath.Join(p.root, "snapshots") }
func (p *Paths) SnapshotDir(id string) string { return filepath.Join(p.root, "snapshots", id) }
