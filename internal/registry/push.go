package registry

import (
	"context"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/hypeman-vm/hypeman/internal/images"
)

// Push uploads the image at src to target and returns the pushed manifest
// digest. src is a docker-archive tarball (docker save, mkimage) holding one
// image, or an OCI image layout directory (its linux/amd64 image, or its only
// one). token is sent as "Authorization: Bearer <token>". Registries on
// loopback are reached over plain HTTP. Blobs the registry already has are
// not uploaded again.
func Push(ctx context.Context, src string, target name.Reference, token string) (string, error) {
	img, err := loadImage(src)
	if err != nil {
		return "", fmt.Errorf("registry: push %s: %w", src, err)
	}
	if images.IsLoopbackHost(target.Context().RegistryStr()) {
		if target, err = name.ParseReference(target.String(), name.Insecure); err != nil {
			return "", err
		}
	}
	auth := authn.FromConfig(authn.AuthConfig{RegistryToken: token})
	if err := remote.Write(target, img, remote.WithContext(ctx), remote.WithAuth(auth), remote.WithUserAgent("hypeman")); err != nil {
		return "", fmt.Errorf("registry: push to %s: %w", target, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), nil
}

// loadImage reads src as an OCI layout directory or a docker-archive file.
func loadImage(src string) (v1.Image, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return tarball.ImageFromPath(src, nil)
	}
	idx, err := layout.ImageIndexFromPath(src)
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range im.Manifests {
		if len(im.Manifests) == 1 || (d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == "amd64") {
			if d.MediaType.IsImage() {
				return idx.Image(d.Digest)
			}
		}
	}
	return nil, fmt.Errorf("%s holds no single image or linux/amd64 image", src)
}
