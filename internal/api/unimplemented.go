package api

import (
	"context"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/oapi"
)

// notYet is the answer of endpoints this server does not implement yet.
func notYet(what string) error {
	return errdefs.Newf(errdefs.ErrNotImplemented, "not_implemented", "%s is not implemented by this server yet", what)
}

func (s *Server) GetResources(ctx context.Context, _ oapi.GetResourcesRequestObject) (oapi.GetResourcesResponseObject, error) {
	return nil, notYet("GET /resources")
}

func (s *Server) UpdateInstance(ctx context.Context, _ oapi.UpdateInstanceRequestObject) (oapi.UpdateInstanceResponseObject, error) {
	return nil, notYet("PATCH /instances/{id}")
}

func (s *Server) AttachVolume(ctx context.Context, _ oapi.AttachVolumeRequestObject) (oapi.AttachVolumeResponseObject, error) {
	return nil, notYet("volumes")
}

func (s *Server) DetachVolume(ctx context.Context, _ oapi.DetachVolumeRequestObject) (oapi.DetachVolumeResponseObject, error) {
	return nil, notYet("volumes")
}

func (s *Server) GetAutoStandbyStatus(ctx context.Context, _ oapi.GetAutoStandbyStatusRequestObject) (oapi.GetAutoStandbyStatusResponseObject, error) {
	return nil, notYet("auto-standby")
}

func (s *Server) HoldAutoStandby(ctx context.Context, _ oapi.HoldAutoStandbyRequestObject) (oapi.HoldAutoStandbyResponseObject, error) {
	return nil, notYet("auto-standby")
}

func (s *Server) GetSnapshotSchedule(ctx context.Context, _ oapi.GetSnapshotScheduleRequestObject) (oapi.GetSnapshotScheduleResponseObject, error) {
	return nil, notYet("snapshot schedules")
}

func (s *Server) SetSnapshotSchedule(ctx context.Context, _ oapi.SetSnapshotScheduleRequestObject) (oapi.SetSnapshotScheduleResponseObject, error) {
	return nil, notYet("snapshot schedules")
}

func (s *Server) DeleteSnapshotSchedule(ctx context.Context, _ oapi.DeleteSnapshotScheduleRequestObject) (oapi.DeleteSnapshotScheduleResponseObject, error) {
	return nil, notYet("snapshot schedules")
}

func (s *Server) ListVolumes(ctx context.Context, _ oapi.ListVolumesRequestObject) (oapi.ListVolumesResponseObject, error) {
	return nil, notYet("volumes")
}

func (s *Server) CreateVolume(ctx context.Context, _ oapi.CreateVolumeRequestObject) (oapi.CreateVolumeResponseObject, error) {
	return nil, notYet("volumes")
}

func (s *Server) GetVolume(ctx context.Context, _ oapi.GetVolumeRequestObject) (oapi.GetVolumeResponseObject, error) {
	return nil, notYet("volumes")
}

func (s *Server) DeleteVolume(ctx context.Context, _ oapi.DeleteVolumeRequestObject) (oapi.DeleteVolumeResponseObject, error) {
	return nil, notYet("volumes")
}

func (s *Server) ListIngresses(ctx context.Context, _ oapi.ListIngressesRequestObject) (oapi.ListIngressesResponseObject, error) {
	return nil, notYet("ingresses")
}

func (s *Server) CreateIngress(ctx context.Context, _ oapi.CreateIngressRequestObject) (oapi.CreateIngressResponseObject, error) {
	return nil, notYet("ingresses")
}

func (s *Server) GetIngress(ctx context.Context, _ oapi.GetIngressRequestObject) (oapi.GetIngressResponseObject, error) {
	return nil, notYet("ingresses")
}

func (s *Server) DeleteIngress(ctx context.Context, _ oapi.DeleteIngressRequestObject) (oapi.DeleteIngressResponseObject, error) {
	return nil, notYet("ingresses")
}
