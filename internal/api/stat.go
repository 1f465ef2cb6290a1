package api

import (
	"context"
	"errors"

	"github.com/hypeman-vm/hypeman/internal/agent"
	"github.com/hypeman-vm/hypeman/internal/agent/proto"
	"github.com/hypeman-vm/hypeman/internal/instances"
	"github.com/hypeman-vm/hypeman/internal/oapi"
)

// agent returns the guest agent of the Running instance ref.
func (s *Server) agent(ctx context.Context, ref string) (*agent.Client, instances.Instance, error) {
	if s.agents != nil {
		return s.agents(ctx, ref)
	}
	return s.Instances.Agent(ctx, ref)
}

// StatInstancePath implements GET /instances/{id}/stat.
func (s *Server) StatInstancePath(ctx context.Context, req oapi.StatInstancePathRequestObject) (oapi.StatInstancePathResponseObject, error) {
	client, _, err := s.agent(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	follow := deref(req.Params.FollowLinks)
	info, err := guestStat(ctx, client, req.Params.Path, follow)
	if err != nil {
		return nil, err
	}
	out := oapi.PathInfo{Exists: info.Exists}
	if info.Exists {
		out.IsDir, out.IsFile = ptr(info.IsDir), ptr(info.IsFile)
		out.Mode, out.Size = ptr(int(info.Mode&0o7777)), ptr(info.Size)
		if !follow {
			out.IsSymlink = ptr(info.IsSymlink)
		}
	}
	if info.LinkTarget != "" {
		out.LinkTarget = ptr(info.LinkTarget)
	}
	if info.Error != "" {
		out.Error = ptr(info.Error)
	}
	return oapi.StatInstancePath200JSONResponse(out), nil
}

// guestStat asks the agent about path. A path the guest reports missing is
// exists:false; another refusal of the guest is exists:false with its
// message. Only a failure to reach the agent is an error.
func guestStat(ctx context.Context, client *agent.Client, path string, follow bool) (proto.PathInfo, error) {
	info, err := client.Stat(ctx, proto.StatRequest{Path: path, FollowLinks: follow})
	var re *proto.RemoteError
	switch {
	case err == nil:
		return info, nil
	case errors.Is(err, proto.ErrNotFoundInGuest):
		return proto.PathInfo{}, nil
	case errors.As(err, &re):
		return proto.PathInfo{Error: re.Message}, nil
	}
	return proto.PathInfo{}, err
}

// GetInstanceStats implements GET /instances/{id}/stats.
func (s *Server) GetInstanceStats(ctx context.Context, req oapi.GetInstanceStatsRequestObject) (oapi.GetInstanceStatsResponseObject, error) {
	var taps instances.TAPCounter
	if s.TAPStats != nil {
		taps = s.TAPStats
	}
	inst, st, err := s.Instances.Stats(ctx, req.Id, taps)
	if err != nil {
		return nil, err
	}
	return oapi.GetInstanceStats200JSONResponse(toAPIStats(inst, st)), nil
}

func toAPIStats(inst instances.Instance, st instances.Stats) oapi.InstanceStats {
	out := oapi.InstanceStats{
		InstanceId: inst.ID, InstanceName: inst.Name,
		CpuSeconds: st.CPUSeconds, MemoryRssBytes: st.RSSBytes, MemoryVmsBytes: st.VMSBytes,
		NetworkRxBytes: st.NetRxBytes, NetworkTxBytes: st.NetTxBytes,
		AllocatedVcpus: st.VCPUs, AllocatedMemoryBytes: st.MemoryBytes,
	}
	if st.MemoryBytes > 0 {
		out.MemoryUtilizationRatio = ptr(float64(st.RSSBytes) / float64(st.MemoryBytes))
	}
	return out
}
