package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/hypeman-vm/hypeman/internal/atomicfile"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// Annotations on index.json entries written by the registry for pushed tags.
const (
	annotationRefName = "org.opencontainers.image.ref.name" // the tag
	annotationRepo    = "dev.hypeman.registry.repository"   // the repository pushed to
)

// Store is the OCI image layout holding every blob hypeman has pulled or been
// pushed (paths.OCILayoutDir):
//
//	oci-layout           {"imageLayoutVersion":"1.0.0"}
//	index.json           one entry per image manifest; tags pushed to the
//	                     registry carry ref.name and repository annotations
//	blobs/sha256/<hex>   content, written only after its digest was verified
//	ingest/              partial uploads (cleared on open)
//
// A blob appears under blobs/ only complete and verified (temp file, fsync,
// rename), so a crash never leaves a blob with wrong content. Store is safe for
// concurrent use.
type Store struct {
	dir string

	mu sync.Mutex // serializes read-modify-write of index.json
}

// OpenStore opens (creating when needed) the layout at dir and clears
// leftover partial uploads.
func OpenStore(dir string) (*Store, error) {
	s := &Store{dir: dir}
	if err := os.RemoveAll(s.ingestDir()); err != nil {
		return nil, fmt.Errorf("images: clear ingest: %w", err)
	}
	for _, d := range []string{filepath.Join(dir, "blobs", "sha256"), s.ingestDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("images: create layout: %w", err)
		}
	}
	if err := s.ensureFile("oci-layout", v1LayoutFile{Version: "1.0.0"}); err != nil {
		return nil, err
	}
	if err := s.ensureFile("index.json", emptyIndex()); err != nil {
		return nil, err
	}
	return s, nil
}

type v1LayoutFile struct {
	Version string `json:"imageLayoutVersion"`
}

func emptyIndex() v1.IndexManifest {
	return v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{}}
}

func (s *Store) ensureFile(name string, v any) error {
	p := filepath.Join(s.dir, name)
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	if err := atomicfile.WriteJSON(p, v); err != nil {
		return fmt.Errorf("images: create %s: %w", name, err)
	}
	return nil
}

// Dir is the layout's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) ingestDir() string { return filepath.Join(s.dir, "ingest") }

// BlobPath is where the blob h lives (whether or not it exists).
func (s *Store) BlobPath(h v1.Hash) string {
	return filepath.Join(s.dir, "blobs", h.Algorithm, h.Hex)
}

// Stat returns the size of blob h, or an error of class ErrNotFound.
func (s *Store) Stat(h v1.Hash) (int64, error) {
	fi, err := os.Stat(s.BlobPath(h))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("images: blob %s: %w", h, errdefs.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("images: stat blob %s: %w", h, err)
	}
	return fi.Size(), nil
}

// Has reports whether blob h is present.
func (s *Store) Has(h v1.Hash) bool {
	_, err := s.Stat(h)
	return err == nil
}

// Open opens blob h for reading; the caller closes it. A missing blob is an
// error of class ErrNotFound.
func (s *Store) Open(h v1.Hash) (*os.File, error) {
	f, err := os.Open(s.BlobPath(h))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("images: blob %s: %w", h, errdefs.ErrNotFound)
	}
	return f, err
}

// Bytes reads all of blob h.
func (s *Store) Bytes(h v1.Hash) ([]byte, error) {
	f, err := s.Open(h)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// NewUpload creates an empty temporary file for an upload in progress. Pass
// it to Commit when complete, or close and remove it to abandon it.
func (s *Store) NewUpload() (*os.File, error) {
	f, err := os.CreateTemp(s.ingestDir(), "upload-*")
	if err != nil {
		return nil, fmt.Errorf("images: new upload: %w", err)
	}
	return f, nil
}

// Put stores the content of r as blob h, verifying its digest. A blob already
// present is not written again (r is then not read). Digest mismatches
// are errors of class ErrInvalidArgument with code "digest_invalid".
func (s *Store) Put(ctx context.Context, h v1.Hash, r io.Reader) error {
	if s.Has(h) {
		return nil
	}
	f, err := s.NewUpload()
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, ctxReader{ctx, r}); err != nil {
		f.Close()
		os.Remove(f.Name())
		return fmt.Errorf("images: write blob %s: %w", h, err)
	}
	return s.Commit(f, h)
}

// Commit verifies that the upload file f holds blob h and moves it into
// place. f is closed and its temporary name removed in every case.
func (s *Store) Commit(f *os.File, h v1.Hash) error {
	defer os.Remove(f.Name())
	defer f.Close()
	if h.Algorithm != "sha256" {
		return errdefs.Newf(errdefs.ErrInvalidArgument, "digest_invalid", "unsupported digest algorithm %q", h.Algorithm)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("images: commit %s: %w", h, err)
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, f); err != nil {
		return fmt.Errorf("images: commit %s: %w", h, err)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != h.Hex {
		return errdefs.Newf(errdefs.ErrInvalidArgument, "digest_invalid", "content has digest sha256:%s, not %s", got, h)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("images: commit %s: %w", h, err)
	}
	if err := os.Rename(f.Name(), s.BlobPath(h)); err != nil {
		return fmt.Errorf("images: commit %s: %w", h, err)
	}
	return nil
}

// PutBytes stores b as a blob and returns its digest.
func (s *Store) PutBytes(ctx context.Context, b []byte) (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		return v1.Hash{}, err
	}
	return h, s.Put(ctx, h, bytes.NewReader(b))
}

// readIndex reads index.json; callers hold s.mu.
func (s *Store) readIndex() (v1.IndexManifest, error) {
	var idx v1.IndexManifest
	b, err := os.ReadFile(filepath.Join(s.dir, "index.json"))
	if err != nil {
		return idx, fmt.Errorf("images: read index.json: %w", err)
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return idx, fmt.Errorf("images: parse index.json: %w", err)
	}
	return idx, nil
}

// updateIndex applies fn to index.json and writes it back atomically.
func (s *Store) updateIndex(fn func(*v1.IndexManifest)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	fn(&idx)
	if err := atomicfile.WriteJSON(filepath.Join(s.dir, "index.json"), idx); err != nil {
		return fmt.Errorf("images: write index.json: %w", err)
	}
	return nil
}

// AddManifest records an untagged index.json entry for desc (once per digest),
// so that the layout names every image it holds.
func (s *Store) AddManifest(desc v1.Descriptor) error {
	return s.updateIndex(func(idx *v1.IndexManifest) {
		for _, d := range idx.Manifests {
			if d.Digest == desc.Digest && d.Annotations[annotationRefName] == "" {
				return
			}
		}
		desc.Annotations = nil
		idx.Manifests = append(idx.Manifests, desc)
	})
}

// SetTag points repo:tag at desc, replacing any previous target.
func (s *Store) SetTag(repo, tag string, desc v1.Descriptor) error {
	return s.updateIndex(func(idx *v1.IndexManifest) {
		kept := idx.Manifests[:0]
		for _, d := range idx.Manifests {
			if !(d.Annotations[annotationRepo] == repo && d.Annotations[annotationRefName] == tag) {
				kept = append(kept, d)
			}
		}
		desc.Annotations = map[string]string{annotationRepo: repo, annotationRefName: tag}
		idx.Manifests = append(kept, desc)
	})
}

// ResolveTag returns the descriptor repo:tag points at, or an error of class
// ErrNotFound.
func (s *Store) ResolveTag(repo, tag string) (v1.Descriptor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx, err := s.readIndex()
	if err != nil {
		return v1.Descriptor{}, err
	}
	for _, d := range idx.Manifests {
		if d.Annotations[annotationRepo] == repo && d.Annotations[annotationRefName] == tag {
			return d, nil
		}
	}
	return v1.Descriptor{}, fmt.Errorf("images: tag %s:%s: %w", repo, tag, errdefs.ErrNotFound)
}

// Tags lists the tags of repo, sorted.
func (s *Store) Tags(repo string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	var tags []string
	for _, d := range idx.Manifests {
		if d.Annotations[annotationRepo] == repo {
			tags = append(tags, d.Annotations[annotationRefName])
		}
	}
	sort.Strings(tags)
	return tags, nil
}

// Image reads the image whose manifest is blob h. Its layers are read lazily
// from the layout.
func (s *Store) Image(h v1.Hash) (v1.Image, error) {
	raw, err := s.Bytes(h)
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("images: manifest %s: %w", h, err)
	}
	mt := m.MediaType
	if mt == "" {
		mt = types.OCIManifestSchema1
	}
	return partial.CompressedToImage(&storeImage{s: s, raw: raw, m: m, mt: mt})
}

// storeImage is a v1 image read from a Store.
type storeImage struct {
	s   *Store
	raw []byte
	m   *v1.Manifest
	mt  types.MediaType
}

func (i *storeImage) RawManifest() ([]byte, error)        { return i.raw, nil }
func (i *storeImage) MediaType() (types.MediaType, error) { return i.mt, nil }
func (i *storeImage) RawConfigFile() ([]byte, error)      { return i.s.Bytes(i.m.Config.Digest) }

func (i *storeImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, d := range append([]v1.Descriptor{i.m.Config}, i.m.Layers...) {
		if d.Digest == h {
			return &storeBlob{s: i.s, desc: d}, nil
		}
	}
	return nil, fmt.Errorf("images: blob %s is not in the image", h)
}

type storeBlob struct {
	s    *Store
	desc v1.Descriptor
}

func (b *storeBlob) Digest() (v1.Hash, error)            { return b.desc.Digest, nil }
func (b *storeBlob) Size() (int64, error)                { return b.desc.Size, nil }
func (b *storeBlob) MediaType() (types.MediaType, error) { return b.desc.MediaType, nil }
func (b *storeBlob) Compressed() (io.ReadCloser, error)  { return b.s.Open(b.desc.Digest) }

// ctxReader fails reads once ctx is done, so long copies can be cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
