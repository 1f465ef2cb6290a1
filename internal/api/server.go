package api

import (
	"context"
	"log/slog"
	"net/http"
	"strings"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/go-chi/chi/v5"
	middleware "github.com/oapi-codegen/nethttp-middleware"

	"github.com/hypeman-vm/hypeman/internal/agent"
	"github.com/hypeman-vm/hypeman/internal/auth"
	"github.com/hypeman-vm/hypeman/internal/images"
	"github.com/hypeman-vm/hypeman/internal/instances"
	"github.com/hypeman-vm/hypeman/internal/oapi"
)

// Capabilities describes the host for GET /capabilities.
type Capabilities struct {
	Version  string
	Runtimes []Runtime
	// DefaultRuntime names the default hypervisor.
	DefaultRuntime string
	Gateway        string
	Subnet         string
}

// Runtime is one hypervisor's availability on this host.
type Runtime struct {
	Name        string
	Available   bool
	Features    []string
	Accelerator string
	Reason      string
}

// Deps are what the API serves.
type Deps struct {
	Instances    *instances.Manager
	Images       *images.Manager
	Registry     http.Handler // serves /v2/
	Verifier     *auth.Verifier
	Capabilities Capabilities
	Log          *slog.Logger
	// TAPStats reads a TAP device's byte counters for GET
	// /instances/{id}/stats; nil reports zero traffic.
	TAPStats func(tap string) (rx, tx uint64, err error)
}

// Server implements oapi.StrictServerInterface.
type Server struct {
	Deps
	// agents finds the guest agent of a Running instance; nil means
	// Instances.Agent. Tests replace it with a fake guest.
	agents func(ctx context.Context, ref string) (*agent.Client, instances.Instance, error)
}

var _ oapi.StrictServerInterface = (*Server)(nil)

// New returns the daemon's whole HTTP handler.
func New(d Deps) (http.Handler, error) {
	return (&Server{Deps: d}).handler()
}

// handler builds the router around s.
func (s *Server) handler() (http.Handler, error) {
	swagger, err := oapi.GetSwagger()
	if err != nil {
		return nil, err
	}
	swagger.Servers = nil // validate the path only, whatever host the client used
	validate := middleware.OapiRequestValidatorWithOptions(swagger, &middleware.Options{
		Options:              openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
		ErrorHandlerWithOpts: s.validationError,
		DoNotValidateServers: true,
	})
	strict := oapi.NewStrictHandlerWithOptions(s, nil, oapi.StrictHTTPServerOptions{
		RequestErrorHandlerFunc: func(w http.ResponseWriter, r *http.Request, err error) {
			writeJSONError(w, http.StatusBadRequest, "Bad Request", err.Error())
		},
		ResponseErrorHandlerFunc: func(w http.ResponseWriter, r *http.Request, err error) {
			writeError(w, r, s.Log, err)
		},
	})

	r := chi.NewRouter()
	r.Get("/spec.yaml", serveSpec)
	if s.Registry != nil {
		r.Handle("/v2", s.Registry)
		r.Handle("/v2/*", s.Registry)
	}
	// The WebSocket routes are not in the OpenAPI document: same auth,
	// no validator.
	ws := r.With(s.recoverer, s.authenticate)
	ws.Get("/instances/{id}/exec", s.serveExec)
	ws.Get("/instances/{id}/cp", s.serveCp)
	api := chi.NewRouter()
	api.Use(s.recoverer, s.authenticate, validate)
	oapi.HandlerWithOptions(strict, oapi.ChiServerOptions{
		BaseRouter: api,
		ErrorHandlerFunc: func(w http.ResponseWriter, r *http.Request, err error) {
			writeJSONError(w, http.StatusBadRequest, "Bad Request", err.Error())
		},
	})
	r.Mount("/", api)
	return r, nil
}

func serveSpec(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/vnd.oai.openapi")
	_, _ = w.Write(oapi.SpecYAML())
}

// validationError answers requests the OpenAPI validator refused, with the
// HTTP status text as the code, as the reference server does.
func (s *Server) validationError(ctx context.Context, err error, w http.ResponseWriter, r *http.Request, opts middleware.ErrorHandlerOpts) {
	status := opts.StatusCode
	if status == 0 {
		status = http.StatusBadRequest
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	if opts.MatchedRoute == nil && status == http.StatusNotFound {
		msg = "no matching operation was found"
	}
	writeJSONError(w, status, http.StatusText(status), msg)
}

// publicPaths need no token.
func publicPath(p string) bool { return p == "/health" }

func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !publicPath(r.URL.Path) {
			if _, err := s.Verifier.VerifyRequest(r); err != nil {
				writeJSONError(w, http.StatusUnauthorized, "Unauthorized", err.Error())
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// recoverer turns a handler panic into a 500 and a log entry: a bad
// request must never take the daemon down.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.Log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", v)
				writeJSONError(w, http.StatusInternalServerError, "internal_error", "internal error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}
