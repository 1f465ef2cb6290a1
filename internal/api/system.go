package api

import (
	"context"
	"runtime"

	"github.com/hypeman-vm/hypeman/internal/oapi"
)

// apiVersion is the info.version of the OpenAPI document we speak.
const apiVersion = "0.3.0"

// GetHealth implements GET /health.
func (s *Server) GetHealth(ctx context.Context, _ oapi.GetHealthRequestObject) (oapi.GetHealthResponseObject, error) {
	return oapi.GetHealth200JSONResponse{Status: oapi.HealthStatusOk}, nil
}

// GetCapabilities implements GET /capabilities.
func (s *Server) GetCapabilities(ctx context.Context, _ oapi.GetCapabilitiesRequestObject) (oapi.GetCapabilitiesResponseObject, error) {
	c := s.Capabilities
	var out oapi.Capabilities
	out.Server.Version = c.Version
	out.Server.ApiVersion = apiVersion
	out.Host.Os, out.Host.Arch = runtime.GOOS, runtime.GOARCH
	out.DefaultRuntime.Name = c.DefaultRuntime
	out.Runtimes = []oapi.RuntimeCapabilities{}
	for _, rt := range c.Runtimes {
		r := oapi.RuntimeCapabilities{Name: rt.Name, Available: rt.Available, Features: append([]string{}, rt.Features...)}
		if rt.Accelerator != "" {
			r.Accelerator = ptr(rt.Accelerator)
		}
		if rt.Reason != "" {
			r.Reason = ptr(rt.Reason)
		}
		if rt.Name == c.DefaultRuntime {
			out.DefaultRuntime.Available = rt.Available
		}
		out.Runtimes = append(out.Runtimes, r)
	}
	out.Network.Model = oapi.CapabilitiesNetworkModelBridge
	out.Network.Gateway, out.Network.Subnet = ptr(c.Gateway), ptr(c.Subnet)
	out.Network.GuestToGuest = true
	out.Images.Platforms = []string{"linux/amd64"}
	out.Images.DefaultPlatform = "linux/amd64"
	out.Features = []string{"instances", "images", "logs", "exec"}
	return oapi.GetCapabilities200JSONResponse(out), nil
}

func ptr[T any](v T) *T { return &v }
