// Package images owns hypeman's image store. It turns OCI references into
// runnable root file systems:
//
//   - it normalizes references (alpine -> docker.io/library/alpine:latest) and
//     resolves them to a manifest digest before anything else happens, so every
//     image is addressed by the digest of its linux/amd64 image manifest;
//   - it pulls the manifest, config and layers into one shared OCI image layout
//     (paths.OCILayoutDir), which the built-in registry (internal/registry)
//     writes pushed blobs into as well, so a layer is stored once;
//   - it converts each image into a read-only erofs file system
//     (paths.ImageRootfs) by flattening the layers, unpacking the result as
//     root and running mkfs.erofs;
//   - it keeps one metadata.json per digest (paths.ImageMetadata) and the map
//     from normalized reference to digest (paths.ImageRefsFile).
//
// An image moves pending -> pulling -> converting -> ready, or to failed. Work
// runs on a bounded queue deduplicated by digest; images interrupted by a
// restart are queued again by New. A tag reference resolves (Get) only once its
// image is ready; until then callers poll by digest or use WaitReady.
//
// The package knows nothing of HTTP: the API layer maps its errdefs classes to
// status codes, and the registry feeds pushed images in through ImportLocal.
package images
