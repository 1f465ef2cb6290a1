// Package registry serves hypeman's built-in OCI distribution registry under
// /v2/, and holds the client that pushes a local image to it (Push).
//
// The registry implements the push and pull subset of the OCI distribution
// spec: GET /v2/, blob HEAD and GET (with ranges), blob uploads (monolithic
// POST ?digest=, POST then PUT, and chunked PATCH), cross-repository mounts
// (every blob is shared), manifest HEAD, GET and PUT by tag or digest, and
// tags/list. Blobs go straight into the images package's OCI layout, so a
// layer pushed twice, or pushed after being pulled, is stored once and a
// re-push skips it (HEAD answers 200). Manifests are blobs in the same layout
// and tags are index.json entries, so both survive a restart.
//
// After a manifest PUT the image is handed to images.Manager.ImportLocal under
// the name "<Host>/<repository>:<tag>" (or "@<digest>" for a push by digest),
// where Host is the request's Host header: the registry part of the reference
// the client pushed to. So after `push 127.0.0.1:4973/demo:v1` the image is
// GET /images/127.0.0.1:4973%2Fdemo:v1 and runs as 127.0.0.1:4973/demo:v1.
// For an image index, the linux/amd64 image it lists is imported.
//
// Every request needs credentials accepted by the caller's Authenticator:
// "Authorization: Bearer <jwt>", or HTTP Basic with the JWT as password (or
// user name), which is what docker and skopeo send with --creds. Without them
// the answer is 401 with a WWW-Authenticate challenge pointing at /v2/token,
// which trades valid credentials for a token (the same JWT).
package registry
