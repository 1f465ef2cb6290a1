package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"time"
)

// probeMarker must match initd.ProbeMarker (the guest prints it).
const probeMarker = "HYPEMAN-PROBE-OK"

// ProbeResult says which accelerator to use and why.
type ProbeResult struct {
	Accel string
	// KVM reports whether a probe VM ran under KVM.
	KVM bool
	// Detail explains the choice, e.g. why KVM is unusable.
	Detail string
}

// Probe boots a tiny VM (kernel and initrd with hypeman.probe=1, which makes
// our init print a marker and power off) under KVM. Opening /dev/kvm is not
// a usable test: some hosts accept KVM_CREATE_VM but cannot run a stock
// guest. Only a VM that really runs counts.
func Probe(ctx context.Context, binary, kernel, initrd string) ProbeResult {
	if binary == "" {
		binary = "qemu-system-x86_64"
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary,
		"-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256M",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "stdio", "-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet hypeman.probe=1")
	out, err := cmd.CombinedOutput()
	if bytes.Contains(out, []byte(probeMarker)) {
		return ProbeResult{Accel: "kvm", KVM: true, Detail: "a probe VM ran under KVM"}
	}
	detail := "a probe VM did not run under KVM"
	if err != nil {
		detail += ": " + err.Error()
	}
	if tail := bytes.TrimSpace(out); len(tail) > 0 {
		if len(tail) > 200 {
			tail = tail[len(tail)-200:]
		}
		detail += fmt.Sprintf(" (%s)", tail)
	}
	return ProbeResult{Accel: "tcg", Detail: detail + "; using TCG software emulation"}
}
