package config

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLoadFileThenEnv(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	os.WriteFile(p, []byte("listen: 127.0.0.1:9999\nnetwork:\n  bridge: br-test\nlimits:\n  max_vcpus: 4\n"), 0o644)
	t.Setenv("HYPEMAN_DATA_DIR", dir)
	t.Setenv("HYPEMAN_MAX_VCPUS", "3")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9999" || c.Network.Bridge != "br-test" || c.DataDir != dir || c.Limits.MaxVCPUs != 3 {
		t.Fatalf("got %+v", c)
	}
	if c.Network.Subnet != "10.100.0.0/16" || c.Defaults.Size != "1GB" {
		t.Fatalf("defaults lost: %+v", c)
	}
}

func TestValidateRejects(t *testing.T) {
	bad := []func(*Config){
		func(c *Config) { c.DataDir = "relative" },
		func(c *Config) { c.Network.Subnet = "10.0.0.0" },
		func(c *Config) { c.Network.Bridge = "a-very-long-bridge-name" },
		func(c *Config) { c.Hypervisor.Accel = "hvf" },
		func(c *Config) { c.Defaults.Size = "lots" },
		func(c *Config) { c.Defaults.StopTimeout = "5" },
	}
	for i, mutate := range bad {
		c := Default()
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("case %d: want error", i)
		}
	}
}

func TestResolveSecretGeneratesOnce(t *testing.T) {
	c := Default()
	c.DataDir = t.TempDir()
	a, err := c.ResolveSecret(true)
	if err != nil || len(a) != 64 {
		t.Fatalf("secret %q, %v", a, err)
	}
	b, err := c.ResolveSecret(false)
	if err != nil || a != b {
		t.Fatalf("second read %q, %v; want %q", b, err, a)
	}
}
