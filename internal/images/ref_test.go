package images

import (
	"reflect"
	"testing"
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
