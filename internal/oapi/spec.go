package oapi

import _ "embed"

// specYAML is held as a string so that the embedded document is immutable.
//
//go:embed openapi.yaml
var specYAML string

// SpecYAML returns the OpenAPI document exactly as written, for serving at
// GET /spec.yaml (Content-Type application/vnd.oai.openapi). It is the same
// document that GetSwagger decodes. Each call returns a fresh copy.
func SpecYAML() []byte { return []byte(specYAML) }
