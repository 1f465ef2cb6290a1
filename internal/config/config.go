// Package config loads the daemon's and CLI's configuration: a YAML file
// (by default /etc/hypeman/config.yaml, or the file named by HYPEMAN_CONFIG),
// then environment overrides (HYPEMAN_*), over documented defaults. It is the
// one place process-wide settings come from.
package config

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hypeman-vm/hypeman/internal/datasize"
)

// DefaultPath is where the configuration file is looked for.
const DefaultPath = "/etc/hypeman/config.yaml"

// Config is the whole configuration. Every field has a default (Default).
type Config struct {
	// Listen is the API's address. Default 127.0.0.1:4973 (the SDK's port).
	Listen string `yaml:"listen"`
	// DataDir holds images, instances and system files. Default /var/lib/hypeman.
	DataDir string `yaml:"data_dir"`
	// JWTSecret signs and checks API tokens (HS256). Empty: a random secret
	// is made on first start and kept in <data_dir>/system/jwt-secret.
	JWTSecret string `yaml:"jwt_secret"`
	// FreezeMode is how forks and snapshots share an instance's disk and
	// RAM without copying: "clone" (reflinks: XFS with reflink=1, btrfs),
	// "move" (any file system), or empty to clone when data_dir can.
	FreezeMode string `yaml:"freeze_mode"`

	Network    Network    `yaml:"network"`
	Hypervisor Hypervisor `yaml:"hypervisor"`
	Kernel     Kernel     `yaml:"kernel"`
	Limits     Limits     `yaml:"limits"`
	Defaults   Defaults   `yaml:"defaults"`
}

// Network configures the instance network.
type Network struct {
	// Bridge is the Linux bridge name. Default hmbr0.
	Bridge string `yaml:"bridge"`
	// Subnet guests get addresses from; the bridge takes the first address.
	// Default 10.100.0.0/16.
	Subnet string `yaml:"subnet"`
}

// Hypervisor configures VM backends.
type Hypervisor struct {
	// Default hypervisor for instances that do not name one. Default qemu.
	Default string `yaml:"default"`
	// QEMUBinary is the QEMU executable. Default qemu-system-x86_64.
	QEMUBinary string `yaml:"qemu_binary"`
	// Accel is auto (probe KVM with a real VM, else TCG), kvm or tcg. Default auto.
	Accel string `yaml:"accel"`
	// TCGCodeSize caps the buffer of code QEMU translates for each VM under
	// TCG (QEMU's tb-size); empty keeps QEMU's default. Smaller saves host
	// memory per VM (the buffer is touched whole) at the cost of
	// translating code again more often. Ignored under KVM.
	TCGCodeSize string `yaml:"tcg_code_size"`
}

// Kernel locates the guest kernel. Empty fields: the Debian cloud kernel is
// downloaded on first start (apt-get download) into the data dir.
type Kernel struct {
	Vmlinuz    string `yaml:"vmlinuz"`
	ModulesDir string `yaml:"modules_dir"`
}

// Limits bound what one instance may ask for.
type Limits struct {
	// MaxVCPUs per instance. Default: the host's CPU count.
	MaxVCPUs int `yaml:"max_vcpus"`
	// MaxMemory per instance. Default 16GB.
	MaxMemory string `yaml:"max_memory"`
	// MaxOverlaySize per instance. Default 100GB.
	MaxOverlaySize string `yaml:"max_overlay_size"`
}

// Defaults apply to instances that do not say.
type Defaults struct {
	Size        string `yaml:"size"`         // default 1GB
	OverlaySize string `yaml:"overlay_size"` // default 10GB
	VCPUs       int    `yaml:"vcpus"`        // default 2
	// StopTimeout is how long a graceful stop waits for the program. Default 5s.
	StopTimeout string `yaml:"stop_timeout"`
}

// Default returns the configuration with every default filled in.
func Default() Config {
	return Config{
		Listen:  "127.0.0.1:4973",
		DataDir: "/var/lib/hypeman",
		Network: Network{Bridge: "hmbr0", Subnet: "10.100.0.0/16"},
		Hypervisor: Hypervisor{
			Default: "qemu", QEMUBinary: "qemu-system-x86_64", Accel: "auto",
		},
		Limits: Limits{
			MaxVCPUs: runtime.NumCPU(), MaxMemory: "16GB", MaxOverlaySize: "100GB",
		},
		Defaults: Defaults{Size: "1GB", OverlaySize: "10GB", VCPUs: 2, StopTimeout: "5s"},
	}
}

// Load reads the file at path (DefaultPath or $HYPEMAN_CONFIG when path is
// empty; a missing default file is not an error), then applies environment
// overrides, then validates.
func Load(path string) (Config, error) {
	c := Default()
	explicit := path != ""
	if path == "" {
		path = os.Getenv("HYPEMAN_CONFIG")
		explicit = path != ""
	}
	if path == "" {
		path = DefaultPath
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := yaml.Unmarshal(data, &c); err != nil {
			return c, fmt.Errorf("config: %s: %w", path, err)
		}
	case errors.Is(err, os.ErrNotExist) && !explicit:
	default:
		return c, fmt.Errorf("config: %w", err)
	}
	if err := c.applyEnv(os.LookupEnv); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// envVars maps each environment variable to the field it overrides.
func (c *Config) envVars() map[string]any {
	return map[string]any{
		"HYPEMAN_LISTEN":               &c.Listen,
		"HYPEMAN_DATA_DIR":             &c.DataDir,
		"HYPEMAN_JWT_SECRET":           &c.JWTSecret,
		"HYPEMAN_FREEZE_MODE":          &c.FreezeMode,
		"HYPEMAN_BRIDGE":               &c.Network.Bridge,
		"HYPEMAN_SUBNET":               &c.Network.Subnet,
		"HYPEMAN_DEFAULT_HYPERVISOR":   &c.Hypervisor.Default,
		"HYPEMAN_QEMU_BINARY":          &c.Hypervisor.QEMUBinary,
		"HYPEMAN_ACCEL":                &c.Hypervisor.Accel,
		"HYPEMAN_TCG_CODE_SIZE":        &c.Hypervisor.TCGCodeSize,
		"HYPEMAN_KERNEL":               &c.Kernel.Vmlinuz,
		"HYPEMAN_KERNEL_MODULES":       &c.Kernel.ModulesDir,
		"HYPEMAN_MAX_VCPUS":            &c.Limits.MaxVCPUs,
		"HYPEMAN_MAX_MEMORY":           &c.Limits.MaxMemory,
		"HYPEMAN_MAX_OVERLAY_SIZE":     &c.Limits.MaxOverlaySize,
		"HYPEMAN_DEFAULT_SIZE":         &c.Defaults.Size,
		"HYPEMAN_DEFAULT_OVERLAY_SIZE": &c.Defaults.OverlaySize,
		"HYPEMAN_DEFAULT_VCPUS":        &c.Defaults.VCPUs,
		"HYPEMAN_STOP_TIMEOUT":         &c.Defaults.StopTimeout,
	}
}

// EnvNames lists the environment variables Load reads, for documentation.
func EnvNames() []string {
	var c Config
	var names []string
	for k := range c.envVars() {
		names = append(names, k)
	}
	return names
}

func (c *Config) applyEnv(lookup func(string) (string, bool)) error {
	for name, field := range c.envVars() {
		v, ok := lookup(name)
		if !ok {
			continue
		}
		switch f := field.(type) {
		case *string:
			*f = v
		case *int:
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("config: %s: %q is not an integer", name, v)
			}
			*f = n
		}
	}
	return nil
}

// Validate checks every field and reports the first problem.
func (c Config) Validate() error {
	if !filepath.IsAbs(c.DataDir) {
		return fmt.Errorf("config: data_dir %q must be an absolute path", c.DataDir)
	}
	switch c.FreezeMode {
	case "", "clone", "move":
	default:
		return fmt.Errorf("config: freeze_mode %q: must be clone, move or empty (clone when data_dir can)", c.FreezeMode)
	}
	if _, err := netip.ParsePrefix(c.Network.Subnet); err != nil {
		return fmt.Errorf("config: network.subnet: %w", err)
	}
	if l := len(c.Network.Bridge); l == 0 || l > 15 {
		return fmt.Errorf("config: network.bridge %q must be 1 to 15 characters", c.Network.Bridge)
	}
	switch c.Hypervisor.Accel {
	case "auto", "kvm", "tcg":
	default:
		return fmt.Errorf("config: hypervisor.accel %q must be auto, kvm or tcg", c.Hypervisor.Accel)
	}
	for name, s := range map[string]string{
		"limits.max_memory": c.Limits.MaxMemory, "limits.max_overlay_size": c.Limits.MaxOverlaySize,
		"defaults.size": c.Defaults.Size, "defaults.overlay_size": c.Defaults.OverlaySize,
	} {
		if _, err := datasize.Parse(s); err != nil {
			return fmt.Errorf("config: %s: %w", name, err)
		}
	}
	if s := c.Hypervisor.TCGCodeSize; s != "" {
		if n, err := datasize.Parse(s); err != nil || n < 1<<20 {
			return fmt.Errorf("config: hypervisor.tcg_code_size %q: a size of at least 1MB", s)
		}
	}
	if _, err := time.ParseDuration(c.Defaults.StopTimeout); err != nil {
		return fmt.Errorf("config: defaults.stop_timeout: %w", err)
	}
	if c.Limits.MaxVCPUs < 1 || c.Defaults.VCPUs < 1 {
		return fmt.Errorf("config: vcpu limits must be at least 1")
	}
	return nil
}

// Bytes parses one of the size fields; Validate has checked it.
func Bytes(s string) int64 {
	n, _ := datasize.Parse(s)
	return n
}

// Duration parses one of the duration fields; Validate has checked it.
func Duration(s string) time.Duration {
	d, _ := time.ParseDuration(s)
	return d
}

// SecretFile is where a generated JWT secret is kept.
func (c Config) SecretFile() string {
	return filepath.Join(c.DataDir, "system", "jwt-secret")
}

// ResolveSecret returns the JWT secret: the configured one, or the one kept
// in the data dir. With create, a missing secret is generated and saved.
func (c Config) ResolveSecret(create bool) (string, error) {
	if c.JWTSecret != "" {
		return c.JWTSecret, nil
	}
	b, err := os.ReadFile(c.SecretFile())
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) || !create {
		return "", fmt.Errorf("config: no jwt_secret configured and %s unreadable: %w", c.SecretFile(), err)
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	secret := hex.EncodeToString(buf)
	if err := os.MkdirAll(filepath.Dir(c.SecretFile()), 0o755); err != nil {
		return "", err
	}
	f, err := os.OpenFile(c.SecretFile(), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, os.ErrExist) {
		return c.ResolveSecret(false)
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.WriteString(secret + "\n"); err != nil {
		return "", err
	}
	return secret, f.Sync()
}
