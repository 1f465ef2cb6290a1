package api

import (
	"context"

	"github.com/hypeman-vm/hypeman/internal/images"
	"github.com/hypeman-vm/hypeman/internal/oapi"
)

func toAPIImage(img images.Image) oapi.Image {
	out := oapi.Image{
		Name: img.Name, Digest: img.Digest, Status: oapi.ImageStatus(img.Status),
		CreatedAt: img.CreatedAt, QueuePosition: img.QueuePosition, Error: img.Error,
		SizeBytes: img.SizeBytes, Entrypoint: img.Entrypoint, Cmd: img.Cmd, Env: img.Env,
		Tags: img.Tags,
	}
	if img.Platform != "" {
		out.Platform = ptr(img.Platform)
	}
	if img.WorkingDir != "" {
		out.WorkingDir = ptr(img.WorkingDir)
	}
	return out
}

// ListImages implements GET /images.
func (s *Server) ListImages(ctx context.Context, req oapi.ListImagesRequestObject) (oapi.ListImagesResponseObject, error) {
	list, err := s.Images.List(ctx, req.Params.Tags)
	if err != nil {
		return nil, err
	}
	out := oapi.ListImages200JSONResponse{}
	for _, img := range list {
		out = append(out, toAPIImage(img))
	}
	return out, nil
}

// CreateImage implements POST /images: the pull runs in the background.
func (s *Server) CreateImage(ctx context.Context, req oapi.CreateImageRequestObject) (oapi.CreateImageResponseObject, error) {
	if err := checkPlatform(req.Body.Platform); err != nil {
		return nil, err
	}
	if err := checkTags(req.Body.Tags); err != nil {
		return nil, err
	}
	img, err := s.Images.Create(ctx, images.CreateRequest{Name: req.Body.Name, Tags: req.Body.Tags})
	if err != nil {
		return nil, err
	}
	return oapi.CreateImage202JSONResponse(toAPIImage(img)), nil
}

// GetImage implements GET /images/{name}.
func (s *Server) GetImage(ctx context.Context, req oapi.GetImageRequestObject) (oapi.GetImageResponseObject, error) {
	img, err := s.Images.Get(ctx, string(req.Name))
	if err != nil {
		return nil, err
	}
	return oapi.GetImage200JSONResponse(toAPIImage(img)), nil
}

// DeleteImage implements DELETE /images/{name}.
func (s *Server) DeleteImage(ctx context.Context, req oapi.DeleteImageRequestObject) (oapi.DeleteImageResponseObject, error) {
	if err := s.Images.Delete(ctx, string(req.Name)); err != nil {
		return nil, err
	}
	return oapi.DeleteImage204Response{}, nil
}

// TagImage implements POST /images/{name}/tag.
func (s *Server) TagImage(ctx context.Context, req oapi.TagImageRequestObject) (oapi.TagImageResponseObject, error) {
	img, err := s.Images.Tag(ctx, string(req.Name), req.Body.Target)
	if err != nil {
		return nil, err
	}
	return oapi.TagImage200JSONResponse(toAPIImage(img)), nil
}
