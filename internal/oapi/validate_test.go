package oapi

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"
	middleware "github.com/oapi-codegen/nethttp-middleware"
)

// TestRequestValidation runs the document through the kin-openapi request
// validator the server is expected to use, to show that the constraints in the
// spec (patterns, enums, optional bodies, %2F routes) behave as intended.
func TestRequestValidation(t *testing.T) {
	swagger, err := GetSwagger()
	if err != nil {
		t.Fatal(err)
	}
	swagger.Servers = nil // match on path only, whatever the host
	validate := middleware.OapiRequestValidatorWithOptions(swagger, &middleware.Options{
		Options: openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
	})

	cases := []struct {
		name, method, target, body string
		status                     int
	}{
		{"escaped image name routes", "GET", "/images/docker.io%2Flibrary%2Falpine:latest", "", 200},
		{"escaped image name subpath", "POST", "/images/docker.io%2Flibrary%2Falpine:latest/tag", `{"target":"a:b"}`, 404},
		{"tag without target", "POST", "/images/a/tag", `{}`, 400},
		{"deepObject tags and state", "GET", "/instances?tags%5Bteam%5D=backend&state=Running", "", 200},
		{"unknown state", "GET", "/instances?state=Bogus", "", 400},
		{"start without body", "POST", "/instances/abc/start", "", 409},
		{"bad instance name", "POST", "/instances", `{"name":"Bad_Name","image":"x"}`, 400},
		{"name too long", "POST", "/instances", `{"name":"` + strings.Repeat("a", 64) + `","image":"x"}`, 400},
		{"bad tag value", "POST", "/instances", `{"name":"ok","image":"x","tags":{"a":"b\u0001"}}`, 400},
		{"bad hypervisor", "POST", "/instances", `{"name":"ok","image":"x","hypervisor":"kvmtool"}`, 400},
		{"wait needs state", "GET", "/instances/abc/wait", "", 400},
		{"bad log source", "GET", "/instances/abc/logs?source=kernel", "", 400},
		{"unknown route", "GET", "/nope", "", 404},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			h := validate(Handler(NewStrictHandler(rec, nil)))
			req := httptest.NewRequest(tc.method, tc.target, strings.NewReader(tc.body))
			if tc.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != tc.status {
				t.Fatalf("status = %d, want %d; body %s", w.Code, tc.status, w.Body)
			}
		})
	}
}
