package instances

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/hypeman-vm/hypeman/internal/atomicfile"
)

// metadataVersion is the schema version of Metadata on disk.
const metadataVersion = 1

// Metadata is what is stored about an instance (metadata.json). Derived
// facts (state, whether a snapshot exists) are never stored.
type Metadata struct {
	SchemaVersion int `json:"schema_version"`

	ID   string `json:"id"`
	Name string `json:"name"`
	// Image is the reference as the caller gave it; ImageDigest pins what
	// the instance boots.
	Image       string `json:"image"`
	ImageDigest string `json:"image_digest"`
	Platform    string `json:"platform,omitempty"`

	MemoryBytes  int64 `json:"memory_bytes"`
	HotplugBytes int64 `json:"hotplug_bytes"`
	OverlayBytes int64 `json:"overlay_bytes"`
	VCPUs        int   `json:"vcpus"`

	Env  map[string]string `json:"env,omitempty"`
	Tags map[string]string `json:"tags,omitempty"`
	// Entrypoint and Cmd override the image's when non-nil.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`

	Hypervisor     string `json:"hypervisor"`
	SkipGuestAgent bool   `json:"skip_guest_agent,omitempty"`

	Network NetworkMeta `json:"network"`

	CreatedAt   time.Time  `json:"created_at"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	StoppedAt   *time.Time `json:"stopped_at,omitempty"`
	ExitCode    *int       `json:"exit_code,omitempty"`
	ExitMessage string     `json:"exit_message,omitempty"`
	// Boot markers of the current boot: when the guest reported that the
	// program started, and when its agent first answered.
	ProgramStartedAt *time.Time `json:"program_started_at,omitempty"`
	AgentReadyAt     *time.Time `json:"agent_ready_at,omitempty"`

	// Boot counts the boots of this instance; a VM watcher only acts on the
	// boot it was started for.
	Boot int `json:"boot"`
	// Accel is the accelerator the current or last boot used.
	Accel string `json:"accel,omitempty"`
	// KernelVersion and Initrd pin the boot files of the current boot.
	KernelVersion string `json:"kernel_version,omitempty"`

	// Creating is true until create finished; a daemon that finds it set at
	// startup rolls the half-made instance back.
	Creating bool `json:"creating,omitempty"`

	// Overlay is the file name, in the instance dir, of the writable
	// overlay disk. Its backing file is an empty ext4 template, or a frozen
	// layer (layers/<id>.qcow2) when the disk was forked or snapshotted.
	Overlay string `json:"overlay"`
	// Layers are the frozen layers under the overlay, oldest first (IDs
	// of layers/<id>.qcow2), kept for garbage collection.
	Layers []string `json:"layers,omitempty"`
	// MemoryBase, when set, is the frozen memory file (memory/<id>.mem)
	// whose private copy-on-write view is this instance's RAM; when empty,
	// the RAM is the instance's own file (mem), mapped shared.
	MemoryBase string `json:"memory_base,omitempty"`
	// VMMGen numbers the VMM processes of this instance; its files
	// (sockets, pid file) carry the number.
	VMMGen int `json:"vmm_gen"`
	// Inherited is set on a fork (or an instance made from a snapshot)
	// whose standby snapshot still holds its source's guest identity;
	// InheritedMAC is the MAC the guest uses then. Its first resume gives it
	// its own identity, then clears both.
	Inherited    bool   `json:"inherited,omitempty"`
	InheritedMAC string `json:"inherited_mac,omitempty"`
	// Pending names an operation in progress ("standby", "restore",
	// "freeze", "switch"); a daemon that finds it set at startup settles it.
	Pending string `json:"pending,omitempty"`
	// Freeze is the plan of a freeze in progress.
	Freeze *freezePlan `json:"freeze,omitempty"`
	// Clones are the last clones of this instance's overlay and RAM file
	// (freezing by cloning), reused while those files are unchanged, so
	// that forks of one Standby source share one memory base (and its
	// page cache). Garbage collection keeps them.
	Clones *cloneCache `json:"clones,omitempty"`
}

// overlayPath is the instance's current overlay disk.
func (m *Manager) overlayPath(meta *Metadata) string {
	return m.paths.InstanceOverlay(meta.ID, meta.Overlay)
}

// NetworkMeta is the instance's network allocation, kept while a VM runs.
type NetworkMeta struct {
	Enabled bool   `json:"enabled"`
	IP      string `json:"ip,omitempty"`
	Prefix  int    `json:"prefix,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	MAC     string `json:"mac,omitempty"`
	TAP     string `json:"tap,omitempty"`
}

func loadMetadata(path string) (*Metadata, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m Metadata
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("metadata %s: %w", path, err)
	}
	if m.SchemaVersion != metadataVersion {
		return nil, fmt.Errorf("metadata %s: schema version %d, want %d", path, m.SchemaVersion, metadataVersion)
	}
	if m.Overlay == "" {
		m.Overlay = "overlay.qcow2" // instances made before overlays were named
	}
	return &m, nil
}

func saveMetadata(path string, m *Metadata) error {
	m.SchemaVersion = metadataVersion
	return atomicfile.WriteJSON(path, m)
}

// clone returns a deep enough copy for readers outside the lock.
func (m *Metadata) clone() *Metadata {
	c := *m
	c.Env = cloneMap(m.Env)
	c.Tags = cloneMap(m.Tags)
	c.Layers = append([]string(nil), m.Layers...)
	c.Entrypoint = append([]string(nil), m.Entrypoint...)
	c.Cmd = append([]string(nil), m.Cmd...)
	if m.Entrypoint == nil {
		c.Entrypoint = nil
	}
	if m.Cmd == nil {
		c.Cmd = nil
	}
	return &c
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
