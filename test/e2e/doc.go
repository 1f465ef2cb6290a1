// Package e2e holds the end-to-end tests: they build real OCI images, start
// the real hypeman binary (bin/hypeman, built by `make build`), and boot
// real VMs under QEMU, all inside a network namespace the test run creates.
//
// TestMain runs twice: the outer run (host namespace) prepares what needs
// the network (the guest kernel, the test images from Debian's archive),
// creates a network namespace and re-executes the test binary inside it;
// the inner run starts daemons and runs the tests, so that every packet to
// a guest stays inside that namespace. Run with `make test` as root.
package e2e
