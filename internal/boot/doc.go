// Package boot owns what QEMU boots before any image is involved: the guest
// kernel and the initramfs. It does not start VMs and does not know about
// instances; it imports only paths, atomicfile and errdefs.
//
// # Kernel
//
// EnsureKernel returns a Kernel (release, vmlinuz, modules directory). The
// guest kernel is Debian's cloud kernel: the metapackage
// linux-image-cloud-amd64 depends on exactly one versioned package
// (linux-image-6.1.0-NN-cloud-amd64), found with apt-cache depends, fetched
// with apt-get download and unpacked with dpkg-deb -x. Nothing is installed
// on the host, so no maintainer scripts and no update-initramfs run. Only
// vmlinuz and the guest modules (plus modules.builtin) are kept, under
// p.KernelDir(version): about 1.5 MB of modules instead of the package's
// 100 MB tree.
//
// Installation is staged in a work directory next to the target and
// renamed into place, so a kernel directory is either absent or complete.
// An flock on system/kernel.lock serializes installers across goroutines
// and processes; a loser of the race finds the winner's kernel when it gets
// the lock. Work directories left by a crash are removed under the lock.
//
// An installed kernel is used as is (the newest, if several) until a
// version is pinned with WithVersion: restarting the daemon never switches
// kernels because Debian published a new one, and needs no apt at all. A
// configured kernel (WithOverride) is checked (bzImage header, modules
// resolvable, module vermagic equal to the image's release) and never
// copied.
//
// # Modules
//
// The cloud kernel builds virtio_pci, virtio_blk, virtio_net,
// virtio_console, virtio_rng, erofs, overlay and vsock as modules, so the
// initramfs must carry them and load them in dependency order
// (GuestModules lists the roots). The unpacked package has no modules.dep:
// depmod runs in the package's postinst, which we never run. Running depmod
// ourselves would need kmod on the host and write into the tree; instead
// ResolveModules reads each module's ELF .modinfo section (NUL-separated
// key=value records; depends= lists module names, name= is the module's own
// name, which uses '_' where the file name may use '-'), takes the closure
// of the roots, drops modules listed in modules.builtin, and sorts it
// topologically with dependencies first. This is exactly the information
// depmod would have used, read directly from the files that will be loaded,
// so it cannot disagree with them. Soft pre-dependencies are followed when
// they name a module file; aliases among them (libcrc32c's "crc32c") are
// skipped, as the algorithm they name is built in.
//
// # Initramfs
//
// BuildInitrd writes a newc cpio archive (the kernel's initramfs format;
// the writer is in cpio.go) with /init (the guest's static PID 1), the
// device nodes /dev/console and /dev/null (the kernel opens /dev/console
// for init's stdio before /init runs, so it must exist in the archive),
// every module file flat under /lib/modules, and /lib/modules/load-order
// naming them in load order. The init creates any other directory it
// needs.
//
// The archive is not compressed. Under software emulation decompression
// runs at emulated speed in the guest kernel, while an uncompressed archive
// is only copied into guest memory by QEMU. At today's size (about 3 MB,
// 1.1 MB gzipped) the measured difference is within run-to-run noise of a
// few hundred milliseconds, but it can only grow with the init binary, and
// disk space is not a concern.
//
// Archives are content-addressed: the name is a sha256 over the format
// version, the init binary, the kernel release and every module's name and
// contents, so a new init binary or kernel gives a new archive and an
// unchanged one is reused without rewriting. The three most recently used
// archives are kept. QEMU reads -initrd when it starts, including when it
// restores a snapshot, so an instance that must survive an upgrade should
// hold its own hard link to the archive it was started with.
package boot
