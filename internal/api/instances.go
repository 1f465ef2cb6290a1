package api

import (
	"context"
	"time"

	"github.com/hypeman-vm/hypeman/internal/datasize"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/instances"
	"github.com/hypeman-vm/hypeman/internal/oapi"
)

func toAPIInstance(in instances.Instance) oapi.Instance {
	out := oapi.Instance{
		Id: in.ID, Name: in.Name, Image: in.Image, State: oapi.InstanceState(in.State),
		CreatedAt: in.CreatedAt, Env: in.Env, Tags: in.Tags,
		Size:        ptr(datasize.Format(in.MemoryBytes)),
		HotplugSize: ptr(datasize.Format(in.HotplugBytes)),
		OverlaySize: ptr(datasize.Format(in.OverlayBytes)),
		Vcpus:       ptr(in.VCPUs),
		StartedAt:   in.StartedAt, StoppedAt: in.StoppedAt, ExitCode: in.ExitCode,
		HasSnapshot: ptr(in.HasSnapshot),
		Hypervisor:  ptr(oapi.Hypervisor(in.Hypervisor)),
	}
	if in.Platform != "" {
		out.Platform = ptr(in.Platform)
	}
	if in.ExitMessage != "" {
		out.ExitMessage = ptr(in.ExitMessage)
	}
	if in.State == instances.StateUnknown && in.StateError != "" {
		out.StateError = ptr(in.StateError)
	}
	net := &oapi.InstanceNetwork{Enabled: ptr(in.Network.Enabled)}
	if in.Network.Enabled {
		net.Name = ptr("default")
		if in.Network.IP != "" {
			net.Ip, net.Mac = ptr(in.Network.IP), ptr(in.Network.MAC)
		}
	}
	out.Network = net
	return out
}

// ListInstances implements GET /instances.
func (s *Server) ListInstances(ctx context.Context, req oapi.ListInstancesRequestObject) (oapi.ListInstancesResponseObject, error) {
	var state instances.State
	if req.Params.State != nil {
		state = instances.State(*req.Params.State)
	}
	list, err := s.Instances.List(ctx, state, req.Params.Tags)
	if err != nil {
		return nil, err
	}
	out := oapi.ListInstances200JSONResponse{}
	for _, in := range list {
		out = append(out, toAPIInstance(in))
	}
	return out, nil
}

// CreateInstance implements POST /instances: create and boot.
func (s *Server) CreateInstance(ctx context.Context, req oapi.CreateInstanceRequestObject) (oapi.CreateInstanceResponseObject, error) {
	b := req.Body
	if err := unsupportedCreateFields(b); err != nil {
		return nil, err
	}
	if err := checkPlatform(b.Platform); err != nil {
		return nil, err
	}
	if err := checkTags(b.Tags); err != nil {
		return nil, err
	}
	cr := instances.CreateRequest{
		Name: b.Name, Image: b.Image, Env: b.Env, Tags: b.Tags,
		Entrypoint: b.Entrypoint, Cmd: b.Cmd, Size: deref(b.Size), OverlaySize: deref(b.OverlaySize),
		VCPUs: deref(b.Vcpus), SkipGuestAgent: deref(b.SkipGuestAgent),
	}
	if hs := deref(b.HotplugSize); hs != "" {
		if n, err := datasize.Parse(hs); err != nil || n != 0 {
			cr.HotplugSize = hs
		}
	}
	if b.Hypervisor != nil {
		cr.Hypervisor = string(*b.Hypervisor)
	}
	if b.Network != nil {
		cr.NetworkEnabled = b.Network.Enabled
	}
	inst, err := s.Instances.Create(ctx, cr)
	if err != nil {
		return nil, err
	}
	return oapi.CreateInstance201JSONResponse(toAPIInstance(inst)), nil
}

// GetInstance implements GET /instances/{id}.
func (s *Server) GetInstance(ctx context.Context, req oapi.GetInstanceRequestObject) (oapi.GetInstanceResponseObject, error) {
	inst, err := s.Instances.Get(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return oapi.GetInstance200JSONResponse(toAPIInstance(inst)), nil
}

// DeleteInstance implements DELETE /instances/{id}.
func (s *Server) DeleteInstance(ctx context.Context, req oapi.DeleteInstanceRequestObject) (oapi.DeleteInstanceResponseObject, error) {
	graceful := req.Params.GracefulShutdown == nil || *req.Params.GracefulShutdown
	if err := s.Instances.Delete(ctx, req.Id, graceful); err != nil {
		return nil, err
	}
	return oapi.DeleteInstance204Response{}, nil
}

// StartInstance implements POST /instances/{id}/start.
func (s *Server) StartInstance(ctx context.Context, req oapi.StartInstanceRequestObject) (oapi.StartInstanceResponseObject, error) {
	var sr instances.StartRequest
	if req.Body != nil {
		sr.Entrypoint, sr.Cmd = req.Body.Entrypoint, req.Body.Cmd
	}
	inst, err := s.Instances.Start(ctx, req.Id, sr)
	if err != nil {
		return nil, err
	}
	return oapi.StartInstance200JSONResponse(toAPIInstance(inst)), nil
}

// StopInstance implements POST /instances/{id}/stop.
func (s *Server) StopInstance(ctx context.Context, req oapi.StopInstanceRequestObject) (oapi.StopInstanceResponseObject, error) {
	inst, err := s.Instances.Stop(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return oapi.StopInstance200JSONResponse(toAPIInstance(inst)), nil
}

// maxWait caps GET /instances/{id}/wait.
const maxWait = 5 * time.Minute

// WaitForInstanceState implements GET /instances/{id}/wait.
func (s *Server) WaitForInstanceState(ctx context.Context, req oapi.WaitForInstanceStateRequestObject) (oapi.WaitForInstanceStateResponseObject, error) {
	target := instances.State(req.Params.State)
	if target == instances.StateUnknown || !instances.ValidState(string(target)) {
		return nil, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_state", "cannot wait for state %q", target)
	}
	timeout := 60 * time.Second
	if t := deref(req.Params.Timeout); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d <= 0 {
			return nil, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_timeout", "invalid timeout %q: a positive Go duration such as 30s", t)
		}
		timeout = min(d, maxWait)
	}
	res, err := s.Instances.WaitForState(ctx, req.Id, target, timeout)
	if err != nil {
		return nil, err
	}
	out := oapi.WaitForStateResponse{State: oapi.InstanceState(res.State), TimedOut: res.TimedOut}
	if res.StateError != "" {
		out.StateError = ptr(res.StateError)
	}
	return oapi.WaitForInstanceState200JSONResponse(out), nil
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
