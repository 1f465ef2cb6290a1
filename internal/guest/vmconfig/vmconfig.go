// Package vmconfig is the contract between the host and the guest init: the
// document the host writes to the VM's config disk before each boot.
//
// The config disk is a raw virtio-blk device (serial "hm-config") whose
// content is this document as JSON, padded with NUL bytes to a multiple of
// 512 bytes. No file system: the guest reads the device and stops at the
// first NUL.
package vmconfig

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// SchemaVersion is the version of Config written by this host.
const SchemaVersion = 1

// Disk serials the host gives each virtio-blk device, so that the guest finds
// devices by role, not by probe order.
const (
	SerialRootfs  = "hm-rootfs"
	SerialOverlay = "hm-overlay"
	SerialConfig  = "hm-config"
)

// Virtio-serial port names.
const (
	// PortEvents carries guest events (see package events) to a file on the
	// host that QEMU appends to, so nothing is lost while the daemon is down.
	PortEvents = "hypeman.events"
	// PortAgent carries the guest agent protocol.
	PortAgent = "hypeman.agent"
	// PortBench exists only in benchmark VMs: the agent moves raw bytes on
	// it, to measure the channel without any protocol (see agentd).
	PortBench = "hypeman.bench"
)

// Config is what the guest init needs to run the instance's program.
type Config struct {
	SchemaVersion int    `json:"schema_version"`
	InstanceID    string `json:"instance_id"`
	Hostname      string `json:"hostname"`

	// Entrypoint and Cmd follow OCI semantics: argv is Entrypoint followed
	// by Cmd; with no Entrypoint, Cmd is the whole argv.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	// Env is the program's environment as KEY=VALUE, image env first and
	// instance env overriding it.
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	// User is the OCI config user: "", "name", "uid", "uid:gid", "name:group".
	User string `json:"user,omitempty"`

	// Network is nil when the instance has no network.
	Network *Network `json:"network,omitempty"`

	// StopTimeoutSeconds is how long init waits after SIGTERM before it
	// sends SIGKILL to the program on a graceful stop.
	StopTimeoutSeconds int `json:"stop_timeout_seconds"`

	// SkipGuestAgent disables the guest agent.
	SkipGuestAgent bool `json:"skip_guest_agent,omitempty"`
}

// Network is the guest's static IPv4 configuration.
type Network struct {
	// MAC identifies the interface to configure.
	MAC       string `json:"mac"`
	IP        string `json:"ip"`
	PrefixLen int    `json:"prefix_len"`
	Gateway   string `json:"gateway"`
	// DNS servers written to /etc/resolv.conf; empty leaves the image's file.
	DNS []string `json:"dns,omitempty"`
}

// Encode returns the config disk content for c.
func Encode(c Config) ([]byte, error) {
	c.SchemaVersion = SchemaVersion
	data, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("vmconfig: encode: %w", err)
	}
	size := (len(data) + 1 + 511) / 512 * 512
	out := make([]byte, size)
	copy(out, data)
	return out, nil
}

// Decode parses config disk content.
func Decode(disk []byte) (Config, error) {
	if i := bytes.IndexByte(disk, 0); i >= 0 {
		disk = disk[:i]
	}
	var c Config
	if err := json.Unmarshal(disk, &c); err != nil {
		return c, fmt.Errorf("vmconfig: decode: %w", err)
	}
	if c.SchemaVersion != SchemaVersion {
		return c, fmt.Errorf("vmconfig: schema version %d, want %d", c.SchemaVersion, SchemaVersion)
	}
	return c, nil
}

// Argv returns the program's argv.
func (c Config) Argv() []string {
	argv := append([]string{}, c.Entrypoint...)
	return append(argv, c.Cmd...)
}
