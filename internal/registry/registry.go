package registry

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"

	"github.com/hypeman-vm/hypeman/internal/images"
)

// Authenticator reports whether r carries valid credentials as
// "Authorization: Bearer <token>". The registry calls it with a copy of the
// request whose Authorization header it may have rewritten from Basic to
// Bearer. It must be safe for concurrent use.
type Authenticator func(r *http.Request) bool

// Registry is the /v2/ handler. Safe for concurrent use.
type Registry struct {
	images *images.Manager
	store  *images.Store
	auth   Authenticator
	log    *slog.Logger

	mu      sync.Mutex
	uploads map[string]*upload // guarded by mu; by upload id
}

// New returns a registry storing into img's OCI layout and importing pushed
// images into img. auth must not be nil. Mount it at /v2/ with the request
// path unchanged (it routes on the full /v2/... path).
func New(img *images.Manager, auth Authenticator, log *slog.Logger) *Registry {
	return &Registry{images: img, store: img.Store(), auth: auth, log: log, uploads: map[string]*upload{}}
}

// repoPattern is the OCI distribution repository name grammar.
var repoPattern = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)

// ServeHTTP routes a /v2/ request.
func (g *Registry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	p := strings.TrimPrefix(r.URL.Path, "/v2")
	if p == "/token" {
		g.token(w, r)
		return
	}
	if !g.authorized(r) {
		g.challenge(w, r)
		return
	}
	if p == "/" || p == "" {
		writeJSON(w, http.StatusOK, struct{}{})
		return
	}
	if e := g.route(w, r, strings.TrimPrefix(p, "/")); e != nil {
		if e.Status >= 500 {
			g.log.Warn("registry: request failed", "method", r.Method, "path", r.URL.Path, "err", e.Message)
		}
		e.write(w)
	}
}

// route dispatches <repo>/blobs/..., <repo>/manifests/<ref> and
// <repo>/tags/list.
func (g *Registry) route(w http.ResponseWriter, r *http.Request, p string) *regError {
	if repo, ok := strings.CutSuffix(p, "/tags/list"); ok && validRepo(repo) {
		return g.tags(w, r, repo)
	}
	if i := strings.LastIndex(p, "/manifests/"); i > 0 && validRepo(p[:i]) {
		return g.manifest(w, r, p[:i], p[i+len("/manifests/"):])
	}
	if i := strings.LastIndex(p, "/blobs/uploads"); i > 0 && validRepo(p[:i]) {
		return g.upload(w, r, p[:i], strings.Trim(p[i+len("/blobs/uploads"):], "/"))
	}
	if i := strings.LastIndex(p, "/blobs/"); i > 0 && validRepo(p[:i]) {
		return g.blob(w, r, p[i+len("/blobs/"):])
	}
	return &regError{http.StatusNotFound, "NAME_INVALID", fmt.Sprintf("unknown registry path /v2/%s", p)}
}

func validRepo(repo string) bool { return len(repo) <= 255 && repoPattern.MatchString(repo) }

// authorized accepts a Bearer token, or Basic credentials whose password or
// user name is a token.
func (g *Registry) authorized(r *http.Request) bool {
	return g.credential(r) != ""
}

// credential returns the token r authenticates with, or "".
func (g *Registry) credential(r *http.Request) string {
	if tok, ok := bearer(r); ok && g.auth(r) {
		return tok
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return ""
	}
	for _, cand := range []string{pass, user} {
		if cand == "" {
			continue
		}
		rr := *r
		rr.Header = r.Header.Clone()
		rr.Header.Set("Authorization", "Bearer "+cand)
		if g.auth(&rr) {
			return cand
		}
	}
	return ""
}

func bearer(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// challenge answers 401 and points the client at the token endpoint.
func (g *Registry) challenge(w http.ResponseWriter, r *http.Request) {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s://%s/v2/token",service="hypeman"`, scheme, r.Host))
	(&regError{http.StatusUnauthorized, "UNAUTHORIZED", "authentication required"}).write(w)
}

// token implements the docker token endpoint: valid credentials are traded
// for a token, which is the presented JWT itself.
func (g *Registry) token(w http.ResponseWriter, r *http.Request) {
	tok := g.credential(r)
	if tok == "" {
		g.challenge(w, r)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"token": tok, "access_token": tok})
}

// regError is an OCI distribution error response.
type regError struct {
	Status  int
	Code    string
	Message string
}

func (e *regError) write(w http.ResponseWriter) {
	type item struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	writeJSON(w, e.Status, map[string][]item{"errors": {{e.Code, e.Message}}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		return // the client went away; nothing to tell it
	}
}

func internalError(err error) *regError {
	return &regError{http.StatusInternalServerError, "UNKNOWN", err.Error()}
}

var errUnsupported = &regError{http.StatusMethodNotAllowed, "UNSUPPORTED", "the operation is unsupported"}
