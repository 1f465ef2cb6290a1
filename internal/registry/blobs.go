package registry

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// blob serves HEAD and GET of a blob by digest (GET honours Range).
func (g *Registry) blob(w http.ResponseWriter, r *http.Request, digest string) *regError {
	h, err := v1.NewHash(digest)
	if err != nil {
		return &regError{http.StatusBadRequest, "DIGEST_INVALID", "invalid digest " + digest}
	}
	switch r.Method {
	case http.MethodHead, http.MethodGet:
	case http.MethodDelete:
		return errUnsupported
	default:
		return &regError{http.StatusMethodNotAllowed, "UNSUPPORTED", "method not allowed on blobs"}
	}
	f, err := g.store.Open(h)
	if errors.Is(err, errdefs.ErrNotFound) {
		return &regError{http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to registry"}
	}
	if err != nil {
		return internalError(err)
	}
	defer f.Close()
	w.Header().Set("Docker-Content-Digest", h.String())
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Accept-Ranges", "bytes")
	// ServeContent answers HEAD without a body and GET with Range support.
	http.ServeContent(w, r, "", time.Time{}, f)
	return nil
}

// upload is one blob upload session, backed by a file in the layout's ingest
// directory.
type upload struct {
	mu   sync.Mutex // guards f and size; a client sends chunks in order
	f    *os.File
	size int64
	repo string
}

// upload handles POST <repo>/blobs/uploads/ and PATCH, PUT, GET and DELETE
// of <repo>/blobs/uploads/<id>.
func (g *Registry) upload(w http.ResponseWriter, r *http.Request, repo, id string) *regError {
	if id == "" {
		if r.Method != http.MethodPost {
			return errUnsupported
		}
		return g.startUpload(w, r, repo)
	}
	u := g.session(id)
	if u == nil || u.repo != repo {
		return &regError{http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry"}
	}
	switch r.Method {
	case http.MethodPatch:
		return g.patchUpload(w, r, id, u)
	case http.MethodPut:
		return g.finishUpload(w, r, id, u)
	case http.MethodGet:
		u.mu.Lock()
		defer u.mu.Unlock()
		setUploadHeaders(w, repo, id, u.size)
		w.WriteHeader(http.StatusNoContent)
		return nil
	case http.MethodDelete:
		g.drop(id, u)
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return errUnsupported
}

// startUpload handles POST: a monolithic upload (?digest=), a cross-repo
// mount (?mount=; every blob is shared, so it succeeds when the blob is
// present), or the start of a session.
func (g *Registry) startUpload(w http.ResponseWriter, r *http.Request, repo string) *regError {
	q := r.URL.Query()
	if d := q.Get("mount"); d != "" {
		if h, err := v1.NewHash(d); err == nil && g.store.Has(h) {
			return blobCreated(w, repo, h)
		}
	}
	if d := q.Get("digest"); d != "" {
		h, err := v1.NewHash(d)
		if err != nil {
			return &regError{http.StatusBadRequest, "DIGEST_INVALID", "invalid digest " + d}
		}
		if err := g.store.Put(r.Context(), h, r.Body); err != nil {
			return storeError(err)
		}
		return blobCreated(w, repo, h)
	}
	f, err := g.store.NewUpload()
	if err != nil {
		return internalError(err)
	}
	id := newID()
	g.mu.Lock()
	g.uploads[id] = &upload{f: f, repo: repo}
	g.mu.Unlock()
	setUploadHeaders(w, repo, id, 0)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// patchUpload appends a chunk. A Content-Range, when given, must start where
// the upload ends.
func (g *Registry) patchUpload(w http.ResponseWriter, r *http.Request, id string, u *upload) *regError {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e := u.append(r); e != nil {
		return e
	}
	setUploadHeaders(w, u.repo, id, u.size)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// finishUpload handles the closing PUT ?digest=, with an optional last chunk.
func (g *Registry) finishUpload(w http.ResponseWriter, r *http.Request, id string, u *upload) *regError {
	h, err := v1.NewHash(r.URL.Query().Get("digest"))
	if err != nil {
		return &regError{http.StatusBadRequest, "DIGEST_INVALID", "digest parameter missing or invalid"}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if e := u.append(r); e != nil {
		return e
	}
	g.forget(id)
	if err := g.store.Commit(u.f, h); err != nil {
		return storeError(err)
	}
	return blobCreated(w, u.repo, h)
}

// append copies r's body to the end of the upload. Callers hold u.mu.
func (u *upload) append(r *http.Request) *regError {
	if cr := r.Header.Get("Content-Range"); cr != "" {
		start, _, ok := parseRange(cr)
		if !ok || start != u.size {
			return &regError{http.StatusRequestedRangeNotSatisfiable, "BLOB_UPLOAD_INVALID",
				fmt.Sprintf("content range %q does not continue the upload at %d", cr, u.size)}
		}
	}
	n, err := io.Copy(u.f, r.Body)
	u.size += n
	if err != nil {
		return &regError{http.StatusBadRequest, "BLOB_UPLOAD_INVALID", "reading chunk: " + err.Error()}
	}
	return nil
}

// parseRange parses "<start>-<end>" (optionally prefixed by "bytes=" or "bytes ").
func parseRange(s string) (start, end int64, ok bool) {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "bytes="), "bytes ")
	a, b, found := strings.Cut(s, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	return start, end, err1 == nil && err2 == nil
}

func (g *Registry) session(id string) *upload {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.uploads[id]
}

func (g *Registry) forget(id string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.uploads, id)
}

// drop abandons an upload and removes its file.
func (g *Registry) drop(id string, u *upload) {
	g.forget(id)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.f.Close()
	os.Remove(u.f.Name())
}

func setUploadHeaders(w http.ResponseWriter, repo, id string, size int64) {
	w.Header().Set("Location", "/v2/"+repo+"/blobs/uploads/"+id)
	w.Header().Set("Docker-Upload-UUID", id)
	end := size - 1
	if end < 0 {
		end = 0
	}
	w.Header().Set("Range", fmt.Sprintf("0-%d", end))
	w.Header().Set("Content-Length", "0")
}

func blobCreated(w http.ResponseWriter, repo string, h v1.Hash) *regError {
	w.Header().Set("Location", "/v2/"+repo+"/blobs/"+h.String())
	w.Header().Set("Docker-Content-Digest", h.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// storeError maps a Store error to a registry error.
func storeError(err error) *regError {
	if errors.Is(err, errdefs.ErrInvalidArgument) {
		return &regError{http.StatusBadRequest, "DIGEST_INVALID", errdefs.Message(err)}
	}
	return internalError(err)
}

func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}
