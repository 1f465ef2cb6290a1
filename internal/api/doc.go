// Package api is the HTTP edge of the daemon: it serves the Hypeman REST API
// (the generated strict server of internal/oapi), the OpenAPI document at
// /spec.yaml, the OCI registry at /v2/, and, later, the WebSocket endpoints.
//
// Handlers do three things: decode the request, call one domain method, and
// convert the result. Errors are never turned into statuses in handlers:
// they are returned, and writeError (errors.go) maps each errdefs class to
// a status and error code, in one place.
package api
