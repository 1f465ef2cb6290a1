package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/images"
	"github.com/hypeman-vm/hypeman/internal/instances"
	"github.com/hypeman-vm/hypeman/internal/network"
)

// imageSource gives the instances package the images it boots.
type imageSource struct {
	images *images.Manager
	// pullWait is how long a create waits for an image being pulled.
	pullWait time.Duration
}

func (s imageSource) ForRun(ctx context.Context, ref string) (instances.Image, error) {
	img, err := s.images.Get(ctx, ref)
	if errors.Is(err, errdefs.ErrNotFound) {
		img, err = s.images.Create(ctx, images.CreateRequest{Name: ref})
	}
	if err != nil {
		return instances.Image{}, err
	}
	if img.Status != images.StatusReady {
		img, err = s.images.WaitReady(ctx, img.Digest, s.pullWait)
		if err != nil {
			return instances.Image{}, errdefs.Newf(errdefs.ErrFailedPrecondition, errdefs.Code(err),
				"image %s is being pulled, please try again shortly (%s)", ref, errdefs.Message(err))
		}
	}
	return s.convert(img), nil
}

func (s imageSource) ByDigest(ctx context.Context, digest string) (instances.Image, error) {
	img, err := s.images.Get(ctx, digest)
	if err != nil {
		return instances.Image{}, err
	}
	if img.Status != images.StatusReady {
		return instances.Image{}, errdefs.Newf(errdefs.ErrFailedPrecondition, "image_not_ready", "image %s is %s", digest, img.Status)
	}
	return s.convert(img), nil
}

func (s imageSource) convert(img images.Image) instances.Image {
	return instances.Image{
		Name: img.Name, Digest: img.Digest, RootfsPath: s.images.RootfsPath(img.Digest),
		Entrypoint: img.Entrypoint, Cmd: img.Cmd, Env: img.Env, WorkingDir: img.WorkingDir,
		User: img.User, Platform: img.Platform,
	}
}

// netAdapter gives the instances package addresses and TAP devices.
type netAdapter struct {
	net *network.Manager
}

func (n netAdapter) Allocate(ctx context.Context, id string) (instances.Allocation, error) {
	a, err := n.net.Allocate(id)
	if err != nil {
		return instances.Allocation{}, err
	}
	if err := n.net.CreateTAP(ctx, a); err != nil {
		n.net.Release(id)
		return instances.Allocation{}, err
	}
	return instances.Allocation{IP: a.IP, Prefix: a.Prefix, Gateway: a.Gateway, MAC: a.MAC, TAP: a.TAP}, nil
}

func (n netAdapter) Reserve(ctx context.Context, id string, a instances.Allocation) error {
	return n.net.Reserve(network.Allocation{InstanceID: id, IP: a.IP, Prefix: a.Prefix, Gateway: a.Gateway, MAC: a.MAC, TAP: a.TAP})
}

func (n netAdapter) Release(ctx context.Context, id string, a instances.Allocation) error {
	err := n.net.DeleteTAP(ctx, a.TAP)
	n.net.Release(id)
	return err
}

func (n netAdapter) AttachTAP(ctx context.Context, a instances.Allocation, up bool) error {
	na := network.Allocation{IP: a.IP, Prefix: a.Prefix, Gateway: a.Gateway, MAC: a.MAC, TAP: a.TAP}
	if err := n.net.CreateTAP(ctx, na); err != nil {
		return err
	}
	if !up {
		return n.net.SetTAPUp(ctx, a.TAP, false)
	}
	return nil
}

func (n netAdapter) DetachTAP(ctx context.Context, tap string) error {
	return n.net.DeleteTAP(ctx, tap)
}

func (n netAdapter) SetTAPUp(ctx context.Context, tap string, up bool) error {
	return n.net.SetTAPUp(ctx, tap, up)
}

func (n netAdapter) AltTAPName(id string) string { return network.AltTAPName(id) }
