// Package testimage builds real OCI images on a machine that cannot reach a
// public registry: a tiny busybox image from Debian's busybox-static package,
// and a Debian root file system made by debootstrap. Tests, the demo and the
// mkimage dev tool push them to a registry on loopback.
//
// Both builders cache their downloads and root file systems in a work
// directory chosen by the caller, so repeated calls are fast, and both build
// deterministic layers (fixed timestamps), so the same inputs give the same
// digests.
package testimage

// DefaultCacheDir is where tests and the demo keep downloads and debootstrap
// results between runs.
const DefaultCacheDir = "/var/cache/hypeman-test"
