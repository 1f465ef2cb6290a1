package images

import (
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

func TestLoopbackAliases(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"127.0.0.1:4973/demo:latest", []string{"localhost:4973/demo:latest", "[::1]:4973/demo:latest"}},
		{"localhost:4973/a/b@sha256:00", []string{"127.0.0.1:4973/a/b@sha256:00", "[::1]:4973/a/b@sha256:00"}},
		{"[::1]:5000/x:1", []string{"localhost:5000/x:1", "127.0.0.1:5000/x:1"}},
		{"docker.io/library/alpine:latest", nil},
		{"registry.local:4973/demo:latest", nil},
	} {
		if got := loopbackAliases(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("loopbackAliases(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestRegistryErrorOfOwnRegistry(t *testing.T) {
	unauthorized := &transport.Error{StatusCode: http.StatusUnauthorized,
		Errors: []transport.Diagnostic{{Code: transport.UnauthorizedErrorCode}}}
	err := registryError("127.0.0.1:4973/demo:nope", unauthorized)
	if errdefs.Code(err) != "not_found" || !strings.Contains(err.Error(), "nothing by that name was pushed to this daemon") {
		t.Errorf("loopback 401: %v", err)
	}
	err = registryError("registry.example:5000/demo:nope", unauthorized)
	if errdefs.Code(err) != "not_found" || !strings.Contains(err.Error(), "registry said UNAUTHORIZED") {
		t.Errorf("remote 401: %v", err)
	}
}
