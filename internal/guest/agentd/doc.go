// Package agentd is the guest agent: a process inside the VM, started by the
// guest init in the image's root (as root, with the program's environment
// and working directory), that serves the host's calls over the
// virtio-serial port vmconfig.PortAgent with the protocol of package
// agent/proto.
//
// Main is the process: it opens the port, waits for the host's Hello, serves
// the session's streams concurrently (one stream per call) until the
// session ends, then kills whatever the session's calls started and waits
// for the next Hello, forever. Server holds the calls themselves (exec,
// copy in and out, stat, and the identity changes a clone needs: network,
// hostname, clock, entropy) and can be driven over any byte stream, which
// is how the tests run it without a VM.
//
// agentd imports only the shared contracts (agent/proto, guest/vmconfig,
// guest/events); nothing on the host imports agentd.
package agentd
