package guestos

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tool"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "data"), []byte("x"), 0o644)
	cases := []struct {
		name, path string
		want       string
		code       int
	}{
		{"tool", "/nonexistent:" + dir, filepath.Join(dir, "tool"), 0},
		{"./tool", "", filepath.Join(dir, "tool"), 0},
		{"missing", dir, "", CodeNotFound},
		{"data", dir, "", CodeNotExecutable},
		{filepath.Join(dir, "data"), "", "", CodeNotExecutable},
		{"/nonexistent/x", "", "", CodeNotFound},
	}
	for _, c := range cases {
		got, code, err := LookPath(c.name, c.path, dir)
		if got != c.want || code != c.code || (code != 0) != (err != nil) {
			t.Errorf("LookPath(%q, %q) = %q, %d, %v; want %q, %d", c.name, c.path, got, code, err, c.want, c.code)
		}
	}
}

func TestEnvValue(t *testing.T) {
	env := []string{"A=1", "B=two=2", "A=3"}
	if EnvValue(env, "A") != "3" || EnvValue(env, "B") != "two=2" || EnvValue(env, "C") != "" {
		t.Fatal("EnvValue")
	}
}
