package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// maxManifest bounds a manifest body (the spec suggests accepting 4 MiB).
const maxManifest = 4 << 20

// manifest serves HEAD, GET and PUT of <repo>/manifests/<ref>.
func (g *Registry) manifest(w http.ResponseWriter, r *http.Request, repo, ref string) *regError {
	switch r.Method {
	case http.MethodHead, http.MethodGet:
		return g.getManifest(w, r, repo, ref)
	case http.MethodPut:
		return g.putManifest(w, r, repo, ref)
	}
	return errUnsupported
}

func (g *Registry) getManifest(w http.ResponseWriter, r *http.Request, repo, ref string) *regError {
	desc, e := g.resolve(repo, ref)
	if e != nil {
		return e
	}
	raw, err := g.store.Bytes(desc.Digest)
	if errors.Is(err, errdefs.ErrNotFound) {
		return manifestUnknown(ref)
	}
	if err != nil {
		return internalError(err)
	}
	mt := desc.MediaType
	if mt == "" {
		mt = sniffMediaType(raw)
	}
	w.Header().Set("Content-Type", string(mt))
	w.Header().Set("Docker-Content-Digest", desc.Digest.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(raw)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(raw)
	}
	return nil
}

// resolve turns a tag or digest into a manifest descriptor. A digest
// descriptor's media type is left empty for the caller to sniff.
func (g *Registry) resolve(repo, ref string) (v1.Descriptor, *regError) {
	if h, err := v1.NewHash(ref); err == nil {
		return v1.Descriptor{Digest: h}, nil
	}
	desc, err := g.store.ResolveTag(repo, ref)
	if errors.Is(err, errdefs.ErrNotFound) {
		return desc, manifestUnknown(ref)
	}
	if err != nil {
		return desc, internalError(err)
	}
	return desc, nil
}

func manifestUnknown(ref string) *regError {
	return &regError{http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown: " + ref}
}

// sniffMediaType reads a manifest's own mediaType field, or guesses from
// its shape when the field is absent (allowed for OCI manifests).
func sniffMediaType(raw []byte) types.MediaType {
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(raw, &probe) == nil && probe.MediaType != "" {
		return probe.MediaType
	}
	if probe.Manifests != nil {
		return types.OCIImageIndex
	}
	return types.OCIManifestSchema1
}

// putManifest stores a pushed manifest after checking that everything it
// references is present, tags it, and imports the image it describes.
func (g *Registry) putManifest(w http.ResponseWriter, r *http.Request, repo, ref string) *regError {
	raw, err := io.ReadAll(io.LimitReader(r.Body, maxManifest+1))
	if err != nil || len(raw) > maxManifest {
		return &regError{http.StatusBadRequest, "MANIFEST_INVALID", "manifest unreadable or larger than 4 MiB"}
	}
	h, _, _ := v1.SHA256(bytes.NewReader(raw))
	tag := ref
	if d, err := v1.NewHash(ref); err == nil {
		if d != h {
			return &regError{http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("manifest digest is %s, not %s", h, d)}
		}
		tag = ""
	}
	mt := types.MediaType(strings.TrimSpace(strings.Split(r.Header.Get("Content-Type"), ";")[0]))
	if mt == "" || mt == "application/json" {
		mt = sniffMediaType(raw)
	}
	image, e := g.checkManifest(raw, mt)
	if e != nil {
		return e
	}
	if e := g.saveManifest(r, repo, tag, raw, v1.Descriptor{MediaType: mt, Digest: h, Size: int64(len(raw))}); e != nil {
		return e
	}
	if e := g.importImage(r, repo, tag, image); e != nil {
		return e
	}
	w.Header().Set("Location", "/v2/"+repo+"/manifests/"+h.String())
	w.Header().Set("Docker-Content-Digest", h.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// checkManifest validates raw and returns the digest of the image manifest
// to import: raw's own for an image, the linux/amd64 child for an index (zero
// when it lists none).
func (g *Registry) checkManifest(raw []byte, mt types.MediaType) (v1.Hash, *regError) {
	h, _, _ := v1.SHA256(bytes.NewReader(raw))
	switch {
	case mt.IsImage():
		m, err := v1.ParseManifest(bytes.NewReader(raw))
		if err != nil {
			return h, &regError{http.StatusBadRequest, "MANIFEST_INVALID", err.Error()}
		}
		return h, g.requireBlobs(append([]v1.Descriptor{m.Config}, m.Layers...))
	case mt.IsIndex():
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return h, &regError{http.StatusBadRequest, "MANIFEST_INVALID", err.Error()}
		}
		if e := g.requireBlobs(idx.Manifests); e != nil {
			return h, e
		}
		return amd64Child(idx), nil
	}
	return h, &regError{http.StatusBadRequest, "MANIFEST_INVALID", fmt.Sprintf("unsupported manifest media type %q", mt)}
}

func amd64Child(idx *v1.IndexManifest) v1.Hash {
	for _, d := range idx.Manifests {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == "amd64" && d.MediaType.IsImage() {
			return d.Digest
		}
	}
	return v1.Hash{}
}

func (g *Registry) requireBlobs(descs []v1.Descriptor) *regError {
	for _, d := range descs {
		if !g.store.Has(d.Digest) {
			return &regError{http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry: " + d.Digest.String()}
		}
	}
	return nil
}

// saveManifest stores the manifest as a blob and records it in index.json,
// under repo:tag when tag is set.
func (g *Registry) saveManifest(r *http.Request, repo, tag string, raw []byte, desc v1.Descriptor) *regError {
	if _, err := g.store.PutBytes(r.Context(), raw); err != nil {
		return internalError(err)
	}
	var err error
	if tag != "" {
		err = g.store.SetTag(repo, tag, desc)
	} else {
		err = g.store.AddManifest(desc)
	}
	if err != nil {
		return internalError(err)
	}
	return nil
}

// importImage hands the pushed image to the image store as
// <Host>/<repo>:<tag>, or <Host>/<repo>@<digest> for a push by digest.
func (g *Registry) importImage(r *http.Request, repo, tag string, image v1.Hash) *regError {
	if image.Hex == "" {
		g.log.Info("registry: index without a linux/amd64 image; not importing", "repo", repo, "tag", tag)
		return nil
	}
	name := strings.ToLower(r.Host) + "/" + repo + "@" + image.String()
	if tag != "" {
		name = strings.ToLower(r.Host) + "/" + repo + ":" + tag
	}
	img, err := g.store.Image(image)
	if err != nil {
		return internalError(err)
	}
	if _, err := g.images.ImportLocal(r.Context(), name, img); err != nil {
		if errors.Is(err, errdefs.ErrInvalidArgument) {
			return &regError{http.StatusBadRequest, "NAME_INVALID", errdefs.Message(err)}
		}
		return internalError(err)
	}
	g.log.Info("registry: image pushed", "name", name, "digest", image)
	return nil
}

// tags serves GET <repo>/tags/list.
func (g *Registry) tags(w http.ResponseWriter, r *http.Request, repo string) *regError {
	if r.Method != http.MethodGet {
		return errUnsupported
	}
	tags, err := g.store.Tags(repo)
	if err != nil {
		return internalError(err)
	}
	if len(tags) == 0 {
		return &regError{http.StatusNotFound, "NAME_UNKNOWN", "repository name not known to registry"}
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": repo, "tags": tags})
	return nil
}
