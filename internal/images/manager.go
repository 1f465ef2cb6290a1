package images

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/hypeman-vm/hypeman/internal/atomicfile"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/paths"
)

// Config tunes a Manager. The zero value is usable.
type Config struct {
	// MaxConcurrentPulls is how many images are pulled and converted at
	// once. Zero means 2.
	MaxConcurrentPulls int
	// InsecureRegistries reports whether a registry host (host or host:port)
	// is reached over plain HTTP. Nil means IsLoopbackHost. (For hosts it
	// does not select, go-containerregistry still falls back to HTTP for
	// private-range addresses after HTTPS fails.)
	InsecureRegistries func(host string) bool
	// Compression is the mkfs.erofs compressor: "" (none), "lz4" or "lz4hc".
	// The default is none because guests read the image under software
	// emulation here, where decompression costs guest CPU.
	Compression string
}

func (c Config) withDefaults() Config {
	if c.MaxConcurrentPulls <= 0 {
		c.MaxConcurrentPulls = 2
	}
	if c.InsecureRegistries == nil {
		c.InsecureRegistries = IsLoopbackHost
	}
	return c
}

// CreateRequest asks for an image to be pulled.
type CreateRequest struct {
	// Name is an OCI reference: alpine, ghcr.io/org/app:v1, repo@sha256:...
	Name string
	// Tags are user labels stored with the image (not OCI tags).
	Tags map[string]string
}

// Manager is the image store. All methods are safe for concurrent use. Close
// must be called to stop its workers.
type Manager struct {
	cfg   Config
	paths *paths.Paths
	log   *slog.Logger
	store *Store
	q     *queue
	wg    sync.WaitGroup
	once  sync.Once

	mu      sync.Mutex
	recs    map[string]*record // guarded by mu; by digest hex
	refs    map[string]string  // guarded by mu; ready tag reference -> digest
	changed chan struct{}      // guarded by mu; closed and replaced on every change
}

// New opens the image store under p, re-queues images that a previous run
// left unfinished, and starts the workers.
func New(cfg Config, p *paths.Paths, log *slog.Logger) (*Manager, error) {
	if err := os.MkdirAll(p.ImageDigestsDir(), 0o755); err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	store, err := OpenStore(p.OCILayoutDir())
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg: cfg.withDefaults(), paths: p, log: log, store: store, q: newQueue(),
		recs: map[string]*record{}, changed: make(chan struct{}),
	}
	if m.refs, err = loadRefs(p.ImageRefsFile()); err != nil {
		return nil, err
	}
	if err := m.loadRecords(); err != nil {
		return nil, err
	}
	m.requeue()
	for i := 0; i < m.cfg.MaxConcurrentPulls; i++ {
		m.wg.Add(1)
		go m.worker()
	}
	return m, nil
}

// Close stops the workers and waits for them. Images being processed stay in
// their current status and are queued again by the next New.
func (m *Manager) Close() {
	m.once.Do(func() {
		m.q.close()
		m.wg.Wait()
	})
}

// Store is the OCI layout shared with the registry.
func (m *Manager) Store() *Store { return m.store }

// RootfsPath is where the erofs root file system of digest (sha256:... or bare
// hex) lives once the image is ready.
func (m *Manager) RootfsPath(digest string) string {
	if h, ok := bareDigest(digest); ok {
		digest = h.Hex
	}
	return m.paths.ImageRootfs(digest)
}

// Create normalizes req.Name, resolves it to the digest of its linux/amd64
// image manifest (a network round trip), and queues a pull unless that digest
// is already known. It is idempotent: asking again returns the same digest,
// and a ready image stays ready. A failed image is queued again. When the
// registry cannot be asked but the reference is known locally (an image
// pushed to the built-in registry, say), the local image is returned.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (Image, error) {
	r, err := m.parse(req.Name)
	if err != nil {
		return Image{}, err
	}
	digest, err := m.resolve(ctx, r)
	if err != nil {
		return m.known(r, err)
	}
	source := r.net.Context().Name() + "@" + digest.String()
	return m.admit(r, digest, source, req.Tags)
}

// ImportLocal registers img, whose blobs the registry has already written (or
// which are written now) into the layout, under reference ref, and queues its
// conversion. The image's manifest digest, as pushed, is the image digest:
// Docker media types are kept as they are, not converted to OCI.
func (m *Manager) ImportLocal(ctx context.Context, ref string, img v1.Image) (Image, error) {
	r, err := m.parse(ref)
	if err != nil {
		return Image{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return Image{}, fmt.Errorf("images: import %s: %w", ref, err)
	}
	if !r.isTag() && r.digest != digest.String() {
		return Image{}, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_name", "reference %s does not match manifest digest %s", ref, digest)
	}
	if err := m.storeImage(ctx, img); err != nil {
		return Image{}, fmt.Errorf("images: import %s: %w", ref, err)
	}
	return m.admit(r, digest, "", nil)
}

// known returns the local image named r when its registry cannot be asked
// (resolveErr), so that asking again for an image pushed to the built-in
// registry, which needs credentials the store does not have, or for one
// whose registry is unreachable, still answers with what is stored.
func (m *Manager) known(r ref, resolveErr error) (Image, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, name, err := m.lookup(r.display, true)
	if err != nil {
		return Image{}, resolveErr
	}
	return rec.view(name, m.q.position(hexOf(rec))), nil
}

func (m *Manager) parse(s string) (ref, error) {
	return parseRef(s, m.cfg.InsecureRegistries)
}

// admit records that r names digest and queues work when needed.
func (m *Manager) admit(r ref, digest v1.Hash, source string, tags map[string]string) (Image, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.recs[digest.Hex]
	if rec == nil {
		return m.admitNew(r, digest, source, tags)
	}
	if r.isTag() {
		rec.addName(r.display)
		if rec.Status == StatusReady {
			m.pointRef(r.display, digest.Hex)
		}
	}
	if rec.Status == StatusFailed {
		rec.Status, rec.Error = StatusPending, ""
		if rec.Source == "" {
			rec.Source = source
		}
		m.q.enqueue(digest.Hex)
	}
	if err := m.saveAll(digest.Hex); err != nil {
		return Image{}, err
	}
	m.notify()
	return rec.view(r.display, m.q.position(digest.Hex)), nil
}

func (m *Manager) admitNew(r ref, digest v1.Hash, source string, tags map[string]string) (Image, error) {
	rec := &record{
		Schema: recordSchema, Digest: digest.String(), Name: r.display, Source: source,
		Status: StatusPending, Platform: "linux/amd64", Tags: tags, CreatedAt: time.Now().UTC(),
	}
	if r.isTag() {
		rec.addName(r.display)
	}
	if err := os.MkdirAll(m.paths.ImageDir(digest.Hex), 0o755); err != nil {
		return Image{}, fmt.Errorf("images: %w", err)
	}
	if err := m.saveRecord(rec); err != nil {
		return Image{}, err
	}
	m.recs[digest.Hex] = rec
	m.q.enqueue(digest.Hex)
	m.notify()
	return rec.view(r.display, m.q.position(digest.Hex)), nil
}

// pointRef points the ready reference name at hex, taking it away from the
// image it pointed at before. Callers hold mu and save afterwards.
func (m *Manager) pointRef(name, hex string) {
	if old := m.refs[name]; old != "" && old != hex {
		if o := m.recs[old]; o != nil && o.removeName(name) {
			if err := m.saveRecord(o); err != nil {
				m.log.Warn("images: save record", "digest", o.Digest, "err", err)
			}
		}
	}
	m.refs[name] = hex
}

// notify wakes WaitReady callers. Callers hold mu.
func (m *Manager) notify() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// Get returns the image named s: a tag reference (resolves only once the
// image is ready), a repo@sha256:... reference, or a bare sha256:... digest.
func (m *Manager) Get(ctx context.Context, s string) (Image, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, name, err := m.lookup(s, false)
	if err != nil {
		return Image{}, err
	}
	return rec.view(name, m.q.position(hexOf(rec))), nil
}

// lookup finds the record s names and the name to show it under. Tag
// references find ready images only, unless pending is set, in which case a
// tag that no ready image carries finds the newest unfinished image asking
// for it. Callers hold mu.
func (m *Manager) lookup(s string, pending bool) (*record, string, error) {
	if h, ok := bareDigest(s); ok {
		if rec := m.recs[h.Hex]; rec != nil {
			return rec, rec.Name, nil
		}
		return nil, "", notFound(s)
	}
	r, err := m.parse(s)
	if err != nil {
		return nil, "", err
	}
	if !r.isTag() {
		h, _ := v1.NewHash(r.digest)
		if rec := m.recs[h.Hex]; rec != nil {
			return rec, r.display, nil
		}
		return nil, "", notFound(s)
	}
	if hex, ok := m.refs[r.display]; ok && m.recs[hex] != nil {
		return m.recs[hex], r.display, nil
	}
	// The daemon's own registry has several loopback names: an image
	// pushed through http://127.0.0.1:4973 is also localhost:4973/...
	for _, alias := range loopbackAliases(r.display) {
		if hex, ok := m.refs[alias]; ok && m.recs[hex] != nil {
			return m.recs[hex], alias, nil
		}
	}
	if pending {
		if rec := m.newestWanting(r.display); rec != nil {
			return rec, r.display, nil
		}
	}
	return nil, "", notFound(s)
}

func (m *Manager) newestWanting(name string) *record {
	var best *record
	for _, rec := range m.recs {
		if rec.Status != StatusReady && rec.hasName(name) && (best == nil || rec.CreatedAt.After(best.CreatedAt)) {
			best = rec
		}
	}
	return best
}

func notFound(s string) error {
	return errdefs.Newf(errdefs.ErrNotFound, "not_found", "image %s not found", s)
}

func hexOf(rec *record) string {
	h, _ := v1.NewHash(rec.Digest)
	return h.Hex
}

// List returns every image, once per tag reference (an image without one is
// listed under its repo@digest name), keeping those whose tags include every
// pair in tags. Ordered by creation time, then name.
func (m *Manager) List(ctx context.Context, tags map[string]string) ([]Image, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []Image{}
	for hex, rec := range m.recs {
		if !matchesTags(rec.Tags, tags) {
			continue
		}
		pos := m.q.position(hex)
		for _, n := range m.listNames(rec) {
			out = append(out, rec.view(n, pos))
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

func (m *Manager) listNames(rec *record) []string {
	if len(rec.Names) > 0 {
		return rec.Names
	}
	if r, err := m.parse(rec.Name); err == nil {
		return []string{r.repo() + "@" + rec.Digest}
	}
	return []string{rec.Digest}
}

// WaitReady waits up to timeout for the image named ref to be ready. Unlike
// Get, a tag reference also finds an image still being pulled. It fails with
// class ErrFailedPrecondition: code "image_not_ready" when time runs out,
// "image_failed" when the pull failed.
func (m *Manager) WaitReady(ctx context.Context, ref string, timeout time.Duration) (Image, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		m.mu.Lock()
		rec, name, err := m.lookup(ref, true)
		var img Image
		if err == nil {
			img = rec.view(name, m.q.position(hexOf(rec)))
		}
		changed := m.changed
		m.mu.Unlock()
		if err != nil {
			return Image{}, err
		}
		switch img.Status {
		case StatusReady:
			return img, nil
		case StatusFailed:
			return img, errdefs.Newf(errdefs.ErrFailedPrecondition, "image_failed", "image %s failed: %s", name, *img.Error)
		}
		select {
		case <-changed:
		case <-timer.C:
			return img, errdefs.Newf(errdefs.ErrFailedPrecondition, "image_not_ready", "image %s is not ready (status %s)", name, img.Status)
		case <-ctx.Done():
			return img, ctx.Err()
		}
	}
}

// Tag points the tag reference target at the image named src (as Get finds
// it) without pulling anything.
func (m *Manager) Tag(ctx context.Context, src, target string) (Image, error) {
	t, err := m.parse(target)
	if err != nil {
		return Image{}, err
	}
	if !t.isTag() {
		return Image{}, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_name", "target %s must be a tag reference", target)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, _, err := m.lookup(src, false)
	if err != nil {
		return Image{}, err
	}
	hex := hexOf(rec)
	rec.addName(t.display)
	if rec.Status == StatusReady {
		m.pointRef(t.display, hex)
	}
	if err := m.saveAll(hex); err != nil {
		return Image{}, err
	}
	m.notify()
	return rec.view(t.display, m.q.position(hex)), nil
}

// Delete removes the reference s. A tag reference is removed from every image
// carrying it; an image left without references is deleted. A digest
// reference deletes that image and all its tags. An image being pulled is
// cancelled first. Blobs stay in the OCI layout.
func (m *Manager) Delete(ctx context.Context, s string) error {
	m.mu.Lock()
	victims, err := m.unlink(s)
	m.notify()
	m.mu.Unlock()
	if err != nil {
		return err
	}
	for _, hex := range victims {
		select {
		case <-m.q.cancel(hex):
		case <-ctx.Done():
			return ctx.Err()
		}
		m.mu.Lock()
		if m.recs[hex] == nil { // not re-created meanwhile
			err = errors.Join(err, os.RemoveAll(m.paths.ImageDir(hex)))
		}
		m.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("images: delete %s: %w", s, err)
	}
	return nil
}

// unlink drops s from the in-memory and persisted state and returns the
// digests whose images must go. Callers hold mu.
func (m *Manager) unlink(s string) ([]string, error) {
	if _, ok := bareDigest(s); !ok {
		r, err := m.parse(s)
		if err != nil {
			return nil, err
		}
		if r.isTag() {
			return m.unlinkTag(r.display, s)
		}
	}
	rec, _, err := m.lookup(s, false)
	if err != nil {
		return nil, err
	}
	hex := hexOf(rec)
	for _, n := range rec.Names {
		if m.refs[n] == hex {
			delete(m.refs, n)
		}
	}
	delete(m.recs, hex)
	return []string{hex}, m.saveRefs()
}

func (m *Manager) unlinkTag(name, s string) ([]string, error) {
	_, found := m.refs[name]
	delete(m.refs, name)
	var victims []string
	for hex, rec := range m.recs {
		if !rec.removeName(name) {
			continue
		}
		found = true
		if len(rec.Names) == 0 {
			delete(m.recs, hex)
			victims = append(victims, hex)
		} else if err := m.saveRecord(rec); err != nil {
			return nil, err
		}
	}
	if !found {
		return nil, notFound(s)
	}
	return victims, m.saveRefs()
}

// saveAll writes the record of hex and refs.json. Callers hold mu.
func (m *Manager) saveAll(hex string) error {
	if err := m.saveRecord(m.recs[hex]); err != nil {
		return err
	}
	return m.saveRefs()
}

func (m *Manager) saveRecord(rec *record) error {
	if err := atomicfile.WriteJSON(m.paths.ImageMetadata(hexOf(rec)), rec); err != nil {
		return fmt.Errorf("images: save %s: %w", rec.Digest, err)
	}
	return nil
}
