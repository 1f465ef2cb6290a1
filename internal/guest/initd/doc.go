// Package initd is the guest's PID 1. It runs from the initramfs and:
//
//  1. mounts /proc, /sys and /dev, and loads the kernel modules listed in
//     /lib/modules/load-order (virtio, erofs, overlay...);
//  2. finds the disks by their virtio serial (vmconfig.Serial*), reads the
//     config disk, mounts the image (erofs, read-only) under a writable
//     ext4 overlay disk with overlayfs, and moves into that root;
//  3. configures the network interface with the static address the host
//     allocated, and the hostname;
//  4. starts the program with the image's and instance's env, workdir, user,
//     entrypoint and cmd, its stdout and stderr on the serial console (the
//     app log), and reports program_start on the events port;
//  5. reaps every orphan; when the program ends, reports its exit code and
//     signal and powers the VM off. On a graceful stop request (the host
//     sends Ctrl-Alt-Del, which the kernel turns into SIGINT for PID 1) it
//     sends SIGTERM to the program, then SIGKILL after the stop timeout.
//
// PID 1 must never exit (the kernel panics), so every failure ends in a
// boot_failed event and a power-off, never in a return from Main.
package initd
