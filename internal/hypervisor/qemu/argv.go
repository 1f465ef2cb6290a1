package qemu

import (
	"fmt"
	"strings"

	"github.com/hypeman-vm/hypeman/internal/hypervisor"
)

// option is one QEMU command-line option with its comma-separated
// properties, rendered without a shell.
type option struct {
	flag  string
	value string
	props []prop
}

type prop struct{ key, value string }

func (o option) args() []string {
	v := o.value
	for _, p := range o.props {
		if v != "" {
			v += ","
		}
		v += p.key + "=" + escapeComma(p.value)
	}
	if v == "" {
		return []string{o.flag}
	}
	return []string{o.flag, v}
}

// escapeComma doubles commas, QEMU's escape for them inside a property.
func escapeComma(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// buildArgs renders spec as QEMU arguments (without the binary).
func buildArgs(spec hypervisor.Spec) []string {
	var opts []option
	opts = append(opts, machineOpts(spec)...)
	opts = append(opts, bootOpts(spec)...)
	opts = append(opts, consoleOpts(spec)...)
	for i, d := range spec.Disks {
		opts = append(opts, diskOpts(i, d)...)
	}
	for i, n := range spec.NICs {
		opts = append(opts, nicOpts(i, n)...)
	}
	opts = append(opts, portOpts(spec.Ports)...)
	opts = append(opts,
		option{flag: "-qmp", value: "unix:" + escapeComma(spec.ControlSocket), props: []prop{{"server", "on"}, {"wait", "off"}}},
		option{flag: "-pidfile", value: spec.PIDFile},
	)
	if spec.Incoming {
		opts = append(opts, option{flag: "-S"}, option{flag: "-incoming", value: "defer"})
	}
	var args []string
	for _, o := range opts {
		args = append(args, o.args()...)
	}
	return args
}

func machineOpts(spec hypervisor.Spec) []option {
	mem := fmt.Sprintf("%dM", spec.MemoryBytes>>20)
	machine := option{flag: "-machine", value: "q35"}
	opts := []option{
		{flag: "-name", value: spec.Name},
		{flag: "-nodefaults"},
		{flag: "-no-user-config"},
		{flag: "-display", value: "none"},
		{flag: "-no-reboot"},
		accelOpt(spec),
		{flag: "-smp", value: fmt.Sprint(spec.VCPUs)},
		{flag: "-m", value: mem},
	}
	if spec.Accel == "kvm" {
		opts = append(opts, option{flag: "-cpu", value: "host"})
	}
	if spec.MemoryFile != "" {
		machine.props = append(machine.props, prop{"memory-backend", "mem"})
		share := "on"
		if spec.MemoryPrivate {
			share = "off"
		}
		opts = append(opts, option{flag: "-object", value: "memory-backend-file", props: []prop{
			{"id", "mem"}, {"size", mem}, {"mem-path", spec.MemoryFile}, {"share", share},
		}})
	}
	return append(opts, machine)
}

func accelOpt(spec hypervisor.Spec) option {
	o := option{flag: "-accel", value: spec.Accel}
	if spec.Accel == "tcg" && spec.TCGCodeMiB > 0 {
		o.props = []prop{{"tb-size", fmt.Sprint(spec.TCGCodeMiB)}}
	}
	return o
}

// linuxBootROM is the option ROM that -kernel adds on q35 (fw_cfg DMA).
const linuxBootROM = "linuxboot_dma.bin"

// bootOpts loads the kernel and initramfs for a boot. A VMM that will load
// a saved state needs neither: the guest is in the state's RAM, and QEMU
// would otherwise keep a private copy of the whole kernel (14 MB) for the
// life of every restored VM and fork. It gets only the option ROM that
// -kernel brings, whose RAM block the state holds.
func bootOpts(spec hypervisor.Spec) []option {
	if spec.Incoming {
		return []option{{flag: "-option-rom", value: linuxBootROM}}
	}
	return []option{
		{flag: "-kernel", value: spec.Kernel},
		{flag: "-initrd", value: spec.Initrd},
		{flag: "-append", value: spec.Cmdline},
	}
}

func consoleOpts(spec hypervisor.Spec) []option {
	return []option{
		{flag: "-chardev", value: "file", props: []prop{{"id", "console"}, {"path", spec.ConsoleLog}, {"append", "on"}}},
		{flag: "-serial", value: "chardev:console"},
	}
}

func diskOpts(i int, d hypervisor.Disk) []option {
	id := fmt.Sprintf("disk%d", i)
	drive := option{flag: "-drive", props: []prop{
		{"file", d.Path}, {"if", "none"}, {"id", id}, {"format", string(d.Format)},
	}}
	if d.ReadOnly {
		drive.props = append(drive.props, prop{"readonly", "on"})
	}
	dev := option{flag: "-device", value: "virtio-blk-pci", props: []prop{{"drive", id}}}
	if d.Serial != "" {
		dev.props = append(dev.props, prop{"serial", d.Serial})
	}
	return []option{drive, dev}
}

func nicOpts(i int, n hypervisor.NIC) []option {
	id := fmt.Sprintf("net%d", i)
	return []option{
		{flag: "-netdev", value: "tap", props: []prop{
			{"id", id}, {"ifname", n.TAP}, {"script", "no"}, {"downscript", "no"},
		}},
		{flag: "-device", value: "virtio-net-pci", props: []prop{{"netdev", id}, {"mac", n.MAC}}},
	}
}

func portOpts(ports []hypervisor.Port) []option {
	if len(ports) == 0 {
		return nil
	}
	opts := []option{{flag: "-device", value: "virtio-serial-pci"}}
	for i, p := range ports {
		id := fmt.Sprintf("port%d", i)
		var chardev option
		switch p.Kind {
		case hypervisor.PortSocket:
			chardev = option{flag: "-chardev", value: "socket", props: []prop{
				{"id", id}, {"path", p.Path}, {"server", "on"}, {"wait", "off"},
			}}
		default:
			chardev = option{flag: "-chardev", value: "file", props: []prop{
				{"id", id}, {"path", p.Path}, {"append", "on"},
			}}
		}
		opts = append(opts, chardev, option{flag: "-device", value: "virtserialport", props: []prop{
			{"chardev", id}, {"name", p.Name},
		}})
	}
	return opts
}
