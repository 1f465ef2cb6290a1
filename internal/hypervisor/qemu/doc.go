// Package qemu runs VMs with qemu-system-x86_64. It builds the command line
// from typed device structs (argv.go), talks to QEMU through QMP over a unix
// socket (qmp.go), and manages the VM process without owning it (process.go):
// QEMU runs in its own session, writes its pid file, and keeps running when
// the daemon exits, so a restarted daemon attaches to it again by pid file
// and control socket.
//
// Accelerator: KVM is used only when a probe VM really runs under it
// (probe.go). On hosts whose /dev/kvm cannot run a stock guest (FACTS.md:
// kvm_pvm), QEMU uses TCG, software emulation.
//
// Graceful shutdown sends Ctrl-Alt-Del: the guest kernel turns it into
// SIGINT for our init (which disabled the reboot-on-CAD), and init stops the
// program and powers off. This needs no guest agent.
package qemu
