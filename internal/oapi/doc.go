// Package oapi holds the hypeman OpenAPI 3.0 document and the Go code that
// oapi-codegen v2.8.2 generates from it: the wire types (Instance,
// CreateInstanceRequest, Image, Error, ...), the strict server interface
// (StrictServerInterface) with its chi router (HandlerWithOptions,
// NewStrictHandlerWithOptions), a typed client (NewClientWithResponses), and
// the embedded parsed spec (GetSwagger) next to the raw YAML (SpecYAML).
//
// This package owns the wire contract and nothing else: it has no behaviour,
// imports no other hypeman package, and the domain never imports it. Handlers
// that implement StrictServerInterface live in the API package and map domain
// results and error classes onto the typed responses declared here.
//
// # Files
//
//   - openapi.yaml: the canonical document, edited by hand. api/openapi.yaml
//     is a symlink to it. The canonical copy lives here rather than in api/
//     because //go:embed can neither reach a parent directory nor embed a
//     symlink, and keeping a second copy would let the two drift apart.
//   - oapi.gen.go: generated; never edit it. Regenerate with
//     `go generate ./internal/oapi` after changing openapi.yaml or
//     api/oapi-codegen.yaml (the generator configuration).
//   - spec.go: SpecYAML, the raw YAML for GET /spec.yaml.
//
// # Wire conventions encoded in the types
//
// Optional scalar and object fields are pointers with omitempty, so unset
// fields are omitted. Optional maps and slices (env, tags, volumes, ...) are
// plain values with omitempty: nil (or empty) is omitted. Fields that are
// required but nullable, such as Instance.ExpiresAt, are pointers without
// omitempty and marshal as null when nil. Required slices (for example
// Capabilities.Features or Resources.Allocations) must be set to an empty,
// non-nil slice when there is nothing to report, or they marshal as null.
//
// Path parameters are decoded by the generated wrapper: chi routes on the
// escaped path when the request has one, and the runtime binder unescapes
// the segment, so GET /images/docker.io%2Flibrary%2Falpine:latest yields the
// image name docker.io/library/alpine:latest.
//
// Request bodies of startInstance, standbyInstance and restoreInstanceSnapshot
// are optional: an empty body reaches the handler as a nil Body, which
// handlers treat as {}. The logs endpoint is text/event-stream; its handler
// returns a GetInstanceLogs200TexteventStreamResponse whose Body is read and
// flushed chunk by chunk, or its own type implementing
// VisitGetInstanceLogsResponse when it needs extra headers.
package oapi
