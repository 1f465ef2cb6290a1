package qemu

import (
	"slices"
	"strings"
	"testing"

	"github.com/hypeman-vm/hypeman/internal/hypervisor"
)

func goldenSpec() hypervisor.Spec {
	return hypervisor.Spec{
		Name:        "vm1",
		VCPUs:       2,
		MemoryBytes: 256 << 20,
		MemoryFile:  "/d/i/mem",
		Kernel:      "/k/vmlinuz",
		Initrd:      "/d/i/initrd.cpio",
		Cmdline:     "console=ttyS0 panic=-1",
		Disks: []hypervisor.Disk{
			{Path: "/img/rootfs.erofs", Format: hypervisor.FormatRaw, ReadOnly: true, Serial: "hm-rootfs"},
			{Path: "/d/i/overlay.qcow2", Format: hypervisor.FormatQCOW2, Serial: "hm-overlay"},
			{Path: "/d/i/plain.img", Format: hypervisor.FormatRaw},
		},
		NICs:       []hypervisor.NIC{{TAP: "hmtap1", MAC: "02:00:00:00:00:01"}},
		ConsoleLog: "/d/i/logs/app.log",
		Ports: []hypervisor.Port{
			{Name: "hypeman.events", Kind: hypervisor.PortFile, Path: "/d/i/events.log"},
			{Name: "hypeman.agent", Kind: hypervisor.PortSocket, Path: "/d/i/agent.sock"},
		},
		ControlSocket: "/d/i/qmp.sock",
		PIDFile:       "/d/i/qemu.pid",
		VMMLog:        "/d/i/logs/vmm.log",
		Accel:         "tcg",
	}
}

func TestBuildArgsGolden(t *testing.T) {
	want := []string{
		"-name", "vm1",
		"-nodefaults",
		"-no-user-config",
		"-display", "none",
		"-no-reboot",
		"-accel", "tcg",
		"-smp", "2",
		"-m", "256M",
		"-object", "memory-backend-file,id=mem,size=256M,mem-path=/d/i/mem,share=on",
		"-machine", "q35,memory-backend=mem",
		"-kernel", "/k/vmlinuz",
		"-initrd", "/d/i/initrd.cpio",
		"-append", "console=ttyS0 panic=-1",
		"-chardev", "file,id=console,path=/d/i/logs/app.log,append=on",
		"-serial", "chardev:console",
		"-drive", "file=/img/rootfs.erofs,if=none,id=disk0,format=raw,readonly=on",
		"-device", "virtio-blk-pci,drive=disk0,serial=hm-rootfs",
		"-drive", "file=/d/i/overlay.qcow2,if=none,id=disk1,format=qcow2",
		"-device", "virtio-blk-pci,drive=disk1,serial=hm-overlay",
		"-drive", "file=/d/i/plain.img,if=none,id=disk2,format=raw",
		"-device", "virtio-blk-pci,drive=disk2",
		"-netdev", "tap,id=net0,ifname=hmtap1,script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01",
		"-device", "virtio-serial-pci",
		"-chardev", "file,id=port0,path=/d/i/events.log,append=on",
		"-device", "virtserialport,chardev=port0,name=hypeman.events",
		"-chardev", "socket,id=port1,path=/d/i/agent.sock,server=on,wait=off",
		"-device", "virtserialport,chardev=port1,name=hypeman.agent",
		"-qmp", "unix:/d/i/qmp.sock,server=on,wait=off",
		"-pidfile", "/d/i/qemu.pid",
	}
	got := buildArgs(goldenSpec())
	if !slices.Equal(got, want) {
		t.Errorf("argv differs:\n got %q\nwant %q", got, want)
	}
}

func TestBuildArgsVariants(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(s *hypervisor.Spec)
		has    [][]string // consecutive args that must appear
		hasNot []string   // args that must not appear
	}{
		{
			name: "kvm uses the host CPU",
			edit: func(s *hypervisor.Spec) { s.Accel = "kvm" },
			has:  [][]string{{"-accel", "kvm", "-smp", "2", "-m", "256M", "-cpu", "host", "-object"}},
		},
		{
			name: "tcg code buffer size",
			edit: func(s *hypervisor.Spec) { s.TCGCodeMiB = 16 },
			has:  [][]string{{"-accel", "tcg,tb-size=16"}},
		},
		{
			name:   "kvm ignores the tcg code buffer size",
			edit:   func(s *hypervisor.Spec) { s.Accel, s.TCGCodeMiB = "kvm", 16 },
			has:    [][]string{{"-accel", "kvm"}},
			hasNot: []string{"tcg,tb-size=16"},
		},
		{
			name:   "tcg has no -cpu",
			edit:   func(s *hypervisor.Spec) {},
			hasNot: []string{"-cpu"},
		},
		{
			name:   "no memory file: anonymous RAM, plain machine",
			edit:   func(s *hypervisor.Spec) { s.MemoryFile = "" },
			has:    [][]string{{"-m", "256M", "-machine", "q35", "-kernel"}},
			hasNot: []string{"-object"},
		},
		{
			name:   "a VMM for a saved state loads no kernel, only the ROM -kernel brings",
			edit:   func(s *hypervisor.Spec) { s.Incoming = true },
			has:    [][]string{{"-option-rom", "linuxboot_dma.bin"}, {"-S", "-incoming", "defer"}},
			hasNot: []string{"-kernel", "-initrd", "-append"},
		},
		{
			name:   "no ports: no virtio-serial controller",
			edit:   func(s *hypervisor.Spec) { s.Ports = nil },
			hasNot: []string{"virtio-serial-pci"},
		},
		{
			name:   "no NICs",
			edit:   func(s *hypervisor.Spec) { s.NICs = nil },
			hasNot: []string{"-netdev"},
		},
		{
			name: "two NICs get their own ids",
			edit: func(s *hypervisor.Spec) {
				s.NICs = append(s.NICs, hypervisor.NIC{TAP: "hmtap2", MAC: "02:00:00:00:00:02"})
			},
			has: [][]string{
				{"-netdev", "tap,id=net1,ifname=hmtap2,script=no,downscript=no"},
				{"-device", "virtio-net-pci,netdev=net1,mac=02:00:00:00:00:02"},
			},
		},
		{
			name: "memory is given in MiB in both places",
			edit: func(s *hypervisor.Spec) { s.MemoryBytes = 1 << 30 },
			has: [][]string{
				{"-m", "1024M"},
				{"-object", "memory-backend-file,id=mem,size=1024M,mem-path=/d/i/mem,share=on"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := goldenSpec()
			tt.edit(&spec)
			got := buildArgs(spec)
			for _, seq := range tt.has {
				if !containsSeq(got, seq) {
					t.Errorf("argv lacks %q:\n%q", seq, got)
				}
			}
			for _, a := range tt.hasNot {
				for _, g := range got {
					if strings.Contains(g, a) {
						t.Errorf("argv has %q (%q)", a, g)
					}
				}
			}
		})
	}
}

// A comma inside a property value must be doubled, or QEMU would read the
// rest as another property. Options whose value QEMU takes verbatim
// (-kernel, -initrd, -append, -pidfile) must not be escaped.
func TestBuildArgsEscapesCommas(t *testing.T) {
	spec := goldenSpec()
	spec.MemoryFile = "/a,b/mem"
	spec.Disks = []hypervisor.Disk{{Path: "/a,b/disk,1.img", Format: hypervisor.FormatRaw, Serial: "hm-rootfs"}}
	spec.ConsoleLog = "/a,b/app.log"
	spec.Ports = []hypervisor.Port{
		{Name: "hypeman.events", Kind: hypervisor.PortFile, Path: "/a,b/events.log"},
		{Name: "hypeman.agent", Kind: hypervisor.PortSocket, Path: "/a,b/agent.sock"},
	}
	spec.ControlSocket = "/a,b/qmp.sock"
	spec.PIDFile = "/a,b/qemu.pid"
	spec.Kernel = "/a,b/vmlinuz"
	spec.Initrd = "/a,b/initrd"
	spec.Cmdline = "quiet a=1,2"
	got := buildArgs(spec)
	for _, seq := range [][]string{
		{"-object", "memory-backend-file,id=mem,size=256M,mem-path=/a,,b/mem,share=on"},
		{"-drive", "file=/a,,b/disk,,1.img,if=none,id=disk0,format=raw"},
		{"-chardev", "file,id=console,path=/a,,b/app.log,append=on"},
		{"-chardev", "file,id=port0,path=/a,,b/events.log,append=on"},
		{"-chardev", "socket,id=port1,path=/a,,b/agent.sock,server=on,wait=off"},
		{"-qmp", "unix:/a,,b/qmp.sock,server=on,wait=off"},
		{"-pidfile", "/a,b/qemu.pid"},
		{"-kernel", "/a,b/vmlinuz"},
		{"-initrd", "/a,b/initrd"},
		{"-append", "quiet a=1,2"},
	} {
		if !containsSeq(got, seq) {
			t.Errorf("argv lacks %q:\n%q", seq, got)
		}
	}
}

func TestArgsDefaults(t *testing.T) {
	spec := goldenSpec()
	spec.Accel = ""
	q := New(Config{}, nil)
	args := q.Args(spec)
	if args[0] != "qemu-system-x86_64" {
		t.Errorf("binary %q", args[0])
	}
	if !containsSeq(args, []string{"-accel", "tcg"}) {
		t.Errorf("default accel is not tcg: %q", args)
	}
	q = New(Config{Binary: "/opt/qemu", Accel: "kvm"}, nil)
	args = q.Args(spec)
	if args[0] != "/opt/qemu" || !containsSeq(args, []string{"-accel", "kvm"}) || q.Accel() != "kvm" {
		t.Errorf("configured binary/accel ignored: %q", args)
	}
	spec.Accel = "tcg"
	if args := q.Args(spec); !containsSeq(args, []string{"-accel", "tcg"}) {
		t.Errorf("the spec's accel must win over the backend's: %q", args)
	}
	q = New(Config{TCGCodeMiB: 24}, nil)
	if args := q.Args(spec); !containsSeq(args, []string{"-accel", "tcg,tb-size=24"}) {
		t.Errorf("configured tcg code buffer size ignored: %q", args)
	}
	if q.Type() != hypervisor.QEMU {
		t.Errorf("type %q", q.Type())
	}
}

func containsSeq(args, seq []string) bool {
	for i := 0; i+len(seq) <= len(args); i++ {
		if slices.Equal(args[i:i+len(seq)], seq) {
			return true
		}
	}
	return false
}
