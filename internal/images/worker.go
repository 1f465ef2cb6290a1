package images

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// errGone means the image was deleted while being processed.
var errGone = errors.New("images: image deleted")

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

func (m *Manager) worker() {
	defer m.wg.Done()
	for {
		hex, ctx, j, ok := m.q.next()
		if !ok {
			return
		}
		m.process(ctx, hex)
		m.q.finish(hex, j)
	}
}

// process pulls and converts one image and records the outcome.
func (m *Manager) process(ctx context.Context, hex string) {
	err := m.build(ctx, hex)
	switch {
	case err == nil:
	case m.q.closing():
		m.log.Info("images: interrupted by shutdown", "digest", hex)
	case ctx.Err() != nil || errors.Is(err, errGone):
		m.log.Info("images: cancelled", "digest", hex)
	default:
		m.log.Warn("images: image failed", "digest", hex, "err", err)
		m.update(hex, func(r *record) { r.Status, r.Error = StatusFailed, err.Error() })
	}
}

// build runs the steps of one image: pull, read config, convert, mark ready.
func (m *Manager) build(ctx context.Context, hex string) error {
	var rec record
	if !m.update(hex, func(r *record) { r.Status = StatusPulling; rec = *r }) {
		return errGone
	}
	if err := m.fetch(ctx, rec); err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	img, err := m.store.Image(v1.Hash{Algorithm: "sha256", Hex: hex})
	if err != nil {
		return fmt.Errorf("read image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if !m.update(hex, func(r *record) { r.Status = StatusConverting; r.setConfig(cf) }) {
		return errGone
	}
	size, err := convert(ctx, img, m.paths.ImageDir(hex), m.paths.ImageRootfs(hex), m.cfg.Compression)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if !m.markReady(hex, size) {
		return errGone
	}
	m.log.Info("images: image ready", "digest", hex, "size", size)
	return nil
}

// update applies fn to the record of hex, saves it and wakes waiters. It
// reports false when the image no longer exists.
func (m *Manager) update(hex string, fn func(*record)) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.recs[hex]
	if rec == nil {
		return false
	}
	fn(rec)
	if err := m.saveRecord(rec); err != nil {
		m.log.Warn("images: save record", "digest", rec.Digest, "err", err)
	}
	m.notify()
	return true
}

// markReady records a finished conversion and points the image's tag
// references at it.
func (m *Manager) markReady(hex string, size int64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.recs[hex]
	if rec == nil {
		return false
	}
	rec.Status, rec.Error, rec.SizeBytes = StatusReady, "", size
	for _, n := range append([]string(nil), rec.Names...) {
		m.pointRef(n, hex)
	}
	if err := m.saveAll(hex); err != nil {
		m.log.Warn("images: save ready image", "digest", rec.Digest, "err", err)
	}
	m.notify()
	return true
}

// fetch makes sure every blob of rec's image is in the layout, pulling from
// rec.Source when something is missing.
func (m *Manager) fetch(ctx context.Context, rec record) error {
	h, err := v1.NewHash(rec.Digest)
	if err != nil {
		return err
	}
	if m.complete(h) {
		return nil
	}
	if rec.Source == "" {
		return fmt.Errorf("blobs of pushed image %s are missing from the layout", rec.Digest)
	}
	r, err := m.parse(rec.Source)
	if err != nil {
		return err
	}
	img, err := remote.Image(r.net, m.remoteOptions(ctx)...)
	if err != nil {
		return registryError(rec.Source, err)
	}
	return m.storeImage(ctx, img)
}

// complete reports whether the manifest h and all blobs it names are present.
func (m *Manager) complete(h v1.Hash) bool {
	img, err := m.store.Image(h)
	if err != nil {
		return false
	}
	mf, err := img.Manifest()
	if err != nil || !m.store.Has(mf.Config.Digest) {
		return false
	}
	for _, l := range mf.Layers {
		if !m.store.Has(l.Digest) {
			return false
		}
	}
	return true
}

// storeImage writes img's layers, config and manifest into the layout (blobs
// already there are skipped) and lists the manifest in index.json.
func (m *Manager) storeImage(ctx context.Context, img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		if err := m.storeLayer(ctx, l); err != nil {
			return err
		}
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if _, err := m.store.PutBytes(ctx, cfg); err != nil {
		return err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return err
	}
	h, err := m.store.PutBytes(ctx, raw)
	if err != nil {
		return err
	}
	mt, err := img.MediaType()
	if err != nil {
		return err
	}
	return m.store.AddManifest(v1.Descriptor{MediaType: mt, Digest: h, Size: int64(len(raw)), Platform: &amd64})
}

func (m *Manager) storeLayer(ctx context.Context, l v1.Layer) error {
	h, err := l.Digest()
	if err != nil {
		return err
	}
	if m.store.Has(h) {
		return nil
	}
	rc, err := l.Compressed()
	if err != nil {
		return registryError(h.String(), err)
	}
	defer rc.Close()
	return m.store.Put(ctx, h, rc)
}

func (m *Manager) remoteOptions(ctx context.Context) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(amd64),
		remote.WithUserAgent("hypeman"),
	}
}

// resolve returns the digest of r's linux/amd64 image manifest, looking
// inside an index when r names one.
func (m *Manager) resolve(ctx context.Context, r ref) (v1.Hash, error) {
	desc, err := remote.Get(r.net, m.remoteOptions(ctx)...)
	if err != nil {
		return v1.Hash{}, registryError(r.display, err)
	}
	if desc.MediaType.IsImage() {
		return desc.Digest, nil
	}
	if !desc.MediaType.IsIndex() {
		return v1.Hash{}, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_name", "%s is a %s, not an image", r.display, desc.MediaType)
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return v1.Hash{}, registryError(r.display, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return v1.Hash{}, registryError(r.display, err)
	}
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.OS == amd64.OS && d.Platform.Architecture == amd64.Architecture && d.MediaType.IsImage() {
			return d.Digest, nil
		}
	}
	return v1.Hash{}, errdefs.Newf(errdefs.ErrNotFound, "platform_not_available", "%s has no linux/amd64 image", r.display)
}

// registryError classifies an error from a registry: unknown names and
// manifests (and denied access, which registries use to hide private
// repositories) are not_found, and so is a registry that cannot be reached
// at all (the reference cannot be resolved; retrying at once would not
// help). The message names the cause without Go's error chain.
func registryError(what string, err error) error {
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusNotFound, http.StatusUnauthorized, http.StatusForbidden:
			reason := http.StatusText(terr.StatusCode)
			if len(terr.Errors) > 0 {
				reason = string(terr.Errors[0].Code)
			}
			if host, _, _ := strings.Cut(what, "/"); terr.StatusCode == http.StatusUnauthorized && IsLoopbackHost(host) {
				// Most likely this daemon's own registry, which the image
				// store asks without a token: the image was never pushed.
				return errdefs.Newf(errdefs.ErrNotFound, "not_found",
					"image %s not found: nothing by that name was pushed to this daemon (and the registry at %s wants credentials)", what, host)
			}
			return errdefs.Newf(errdefs.ErrNotFound, "not_found", "image %s not found (registry said %s)", what, reason)
		}
		return fmt.Errorf("images: registry error for %s: %v: %w", what, err, errdefs.ErrUnavailable)
	}
	var operr *net.OpError
	if errors.As(err, &operr) {
		return errdefs.Newf(errdefs.ErrNotFound, "not_found", "image %s not found: its registry cannot be reached (%s %s: %v)",
			what, operr.Op, operr.Addr, operr.Err)
	}
	return fmt.Errorf("images: registry error for %s: %v: %w", what, err, errdefs.ErrUnavailable)
}
