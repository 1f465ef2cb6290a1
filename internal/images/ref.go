package images

import (
	"net"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// gcrDockerHub is how go-containerregistry spells Docker Hub's registry; we
// show it as docker.io.
const gcrDockerHub = "index.docker.io"

// ref is a parsed, normalized image reference.
type ref struct {
	net     name.Reference // for talking to the registry
	display string         // normalized form, e.g. docker.io/library/alpine:latest
	digest  string         // "sha256:..." for digest references, else ""
}

// isTag reports whether r names a tag rather than a digest.
func (r ref) isTag() bool { return r.digest == "" }

// repo is the normalized repository, e.g. docker.io/library/alpine.
func (r ref) repo() string { return displayRepo(r.net.Context()) }

// parseRef normalizes s. insecure decides which registry hosts use plain
// HTTP. Invalid references are invalid_name errors.
func parseRef(s string, insecure func(host string) bool) (ref, error) {
	r, err := name.ParseReference(s)
	if err != nil || strings.TrimSpace(s) != s {
		return ref{}, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_name", "invalid image reference %q", s)
	}
	if insecure(r.Context().RegistryStr()) {
		if r, err = name.ParseReference(s, name.Insecure); err != nil {
			return ref{}, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_name", "invalid image reference %q", s)
		}
	}
	out := ref{net: r}
	if d, ok := r.(name.Digest); ok {
		out.digest = d.DigestStr()
		out.display = out.repo() + "@" + out.digest
	} else {
		out.display = out.repo() + ":" + r.Identifier()
	}
	return out, nil
}

func displayRepo(repo name.Repository) string {
	reg := repo.RegistryStr()
	if reg == gcrDockerHub {
		reg = "docker.io"
	}
	return reg + "/" + repo.RepositoryStr()
}

// bareDigest reports whether s is a bare manifest digest (sha256:<hex>).
func bareDigest(s string) (v1.Hash, bool) {
	h, err := v1.NewHash(s)
	return h, err == nil
}

// NormalizeRef returns the normalized form of an image reference
// (alpine -> docker.io/library/alpine:latest), or an invalid_name error.
func NormalizeRef(s string) (string, error) {
	if h, ok := bareDigest(s); ok {
		return h.String(), nil
	}
	r, err := parseRef(s, func(string) bool { return false })
	if err != nil {
		return "", err
	}
	return r.display, nil
}

// IsLoopbackHost is the default Config.InsecureRegistries: registries on
// 127.0.0.0/8, ::1 and localhost (with or without a port) use plain HTTP.
func IsLoopbackHost(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// loopbackAliases returns the other spellings of a reference whose
// registry is a loopback host (localhost, 127.0.0.1, [::1]; same port),
// or nil.
func loopbackAliases(display string) []string {
	reg, rest, ok := strings.Cut(display, "/")
	if !ok || !IsLoopbackHost(reg) {
		return nil
	}
	host, port, err := net.SplitHostPort(reg)
	if err != nil {
		host, port = strings.Trim(reg, "[]"), ""
	}
	var out []string
	for _, h := range []string{"localhost", "127.0.0.1", "::1"} {
		if strings.EqualFold(h, host) {
			continue
		}
		alias := h
		if port != "" {
			alias = net.JoinHostPort(h, port)
		} else if h == "::1" {
			alias = "[::1]"
		}
		out = append(out, alias+"/"+rest)
	}
	return out
}
