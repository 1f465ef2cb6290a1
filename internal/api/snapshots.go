package api

import (
	"context"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/instances"
	"github.com/hypeman-vm/hypeman/internal/oapi"
)

// StandbyInstance implements POST /instances/{id}/standby.
func (s *Server) StandbyInstance(ctx context.Context, req oapi.StandbyInstanceRequestObject) (oapi.StandbyInstanceResponseObject, error) {
	if b := req.Body; b != nil && b.Compression != nil && b.Compression.Enabled {
		return nil, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_snapshot_compression",
			"snapshot compression is not supported: memory is never copied into a snapshot here, so there is nothing to compress")
	}
	inst, err := s.Instances.Standby(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return oapi.StandbyInstance200JSONResponse(toAPIInstance(inst)), nil
}

// RestoreInstance implements POST /instances/{id}/restore.
func (s *Server) RestoreInstance(ctx context.Context, req oapi.RestoreInstanceRequestObject) (oapi.RestoreInstanceResponseObject, error) {
	inst, err := s.Instances.Restore(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	return oapi.RestoreInstance200JSONResponse(toAPIInstance(inst)), nil
}

// ForkInstance implements POST /instances/{id}/fork.
func (s *Server) ForkInstance(ctx context.Context, req oapi.ForkInstanceRequestObject) (oapi.ForkInstanceResponseObject, error) {
	b := req.Body
	fr := instances.ForkRequest{Name: b.Name, FromRunning: deref(b.FromRunning)}
	if b.TargetState != nil {
		fr.TargetState = instances.State(*b.TargetState)
	}
	inst, err := s.Instances.Fork(ctx, req.Id, fr)
	if err != nil {
		return nil, err
	}
	return oapi.ForkInstance201JSONResponse(toAPIInstance(inst)), nil
}

func toAPISnapshot(sn *instances.Snapshot) oapi.Snapshot {
	return oapi.Snapshot{
		Id: sn.ID, Kind: oapi.SnapshotKind(sn.Kind), Name: ptr(sn.Name), Tags: sn.Tags,
		SourceInstanceId: sn.SourceID, SourceInstanceName: sn.SourceName,
		SourceHypervisor: oapi.Hypervisor(sn.SourceHypervisor), CreatedAt: sn.CreatedAt, SizeBytes: sn.SizeBytes,
		CompressionState: ptr(oapi.SnapshotCompressionStateNone),
	}
}

// CreateInstanceSnapshot implements POST /instances/{id}/snapshots.
func (s *Server) CreateInstanceSnapshot(ctx context.Context, req oapi.CreateInstanceSnapshotRequestObject) (oapi.CreateInstanceSnapshotResponseObject, error) {
	b := req.Body
	if b.Compression != nil && b.Compression.Enabled {
		return nil, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_snapshot_compression",
			"snapshot compression is not supported: snapshots share frozen memory instead of copying it")
	}
	if err := checkTags(b.Tags); err != nil {
		return nil, err
	}
	sn, err := s.Instances.CreateSnapshot(ctx, req.Id, instances.CreateSnapshotRequest{Kind: string(b.Kind), Name: deref(b.Name), Tags: b.Tags})
	if err != nil {
		return nil, err
	}
	return oapi.CreateInstanceSnapshot201JSONResponse(toAPISnapshot(sn)), nil
}

// RestoreInstanceSnapshot implements POST /instances/{id}/snapshots/{snapshotId}/restore.
func (s *Server) RestoreInstanceSnapshot(ctx context.Context, req oapi.RestoreInstanceSnapshotRequestObject) (oapi.RestoreInstanceSnapshotResponseObject, error) {
	var target instances.State
	if b := req.Body; b != nil {
		if err := checkTargetHypervisor(b.TargetHypervisor); err != nil {
			return nil, err
		}
		if b.TargetState != nil {
			target = instances.State(*b.TargetState)
		}
	}
	inst, err := s.Instances.RestoreSnapshot(ctx, req.Id, req.SnapshotId, target)
	if err != nil {
		return nil, err
	}
	return oapi.RestoreInstanceSnapshot200JSONResponse(toAPIInstance(inst)), nil
}

func checkTargetHypervisor(h *oapi.Hypervisor) error {
	if h == nil || *h == oapi.HypervisorQemu {
		return nil
	}
	return errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request", "target_hypervisor %s is not available on this host", *h)
}

// ListSnapshots implements GET /snapshots.
func (s *Server) ListSnapshots(ctx context.Context, req oapi.ListSnapshotsRequestObject) (oapi.ListSnapshotsResponseObject, error) {
	p := req.Params
	f := instances.SnapshotFilter{SourceID: deref(p.SourceInstanceId), Name: deref(p.Name), Tags: p.Tags}
	if p.Kind != nil {
		f.Kind = string(*p.Kind)
	}
	list, err := s.Instances.ListSnapshots(ctx, f)
	if err != nil {
		return nil, err
	}
	out := oapi.ListSnapshots200JSONResponse{}
	for _, sn := range list {
		out = append(out, toAPISnapshot(sn))
	}
	return out, nil
}

// GetSnapshot implements GET /snapshots/{snapshotId}.
func (s *Server) GetSnapshot(ctx context.Context, req oapi.GetSnapshotRequestObject) (oapi.GetSnapshotResponseObject, error) {
	sn, err := s.Instances.GetSnapshot(ctx, req.SnapshotId)
	if err != nil {
		return nil, err
	}
	return oapi.GetSnapshot200JSONResponse(toAPISnapshot(sn)), nil
}

// DeleteSnapshot implements DELETE /snapshots/{snapshotId}.
func (s *Server) DeleteSnapshot(ctx context.Context, req oapi.DeleteSnapshotRequestObject) (oapi.DeleteSnapshotResponseObject, error) {
	if err := s.Instances.DeleteSnapshot(ctx, req.SnapshotId); err != nil {
		return nil, err
	}
	return oapi.DeleteSnapshot204Response{}, nil
}

// ForkSnapshot implements POST /snapshots/{snapshotId}/fork.
func (s *Server) ForkSnapshot(ctx context.Context, req oapi.ForkSnapshotRequestObject) (oapi.ForkSnapshotResponseObject, error) {
	b := req.Body
	if err := checkTargetHypervisor(b.TargetHypervisor); err != nil {
		return nil, err
	}
	fr := instances.ForkRequest{Name: b.Name}
	if b.TargetState != nil {
		fr.TargetState = instances.State(*b.TargetState)
	}
	inst, err := s.Instances.ForkSnapshot(ctx, req.SnapshotId, fr)
	if err != nil {
		return nil, err
	}
	return oapi.ForkSnapshot201JSONResponse(toAPIInstance(inst)), nil
}
