package images

import (
	"maps"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Status is where an image is in its pull and conversion.
type Status string

// The statuses of an image, in the order an image moves through them.
const (
	StatusPending    Status = "pending"    // queued, waiting for a worker
	StatusPulling    Status = "pulling"    // fetching blobs into the OCI layout
	StatusConverting Status = "converting" // building rootfs.erofs
	StatusReady      Status = "ready"      // rootfs.erofs is complete
	StatusFailed     Status = "failed"     // Error says why
)

// Image is one image as seen through one reference.
type Image struct {
	// Name is the normalized reference the image was asked for, e.g.
	// docker.io/library/alpine:latest or 127.0.0.1:4973/demo@sha256:...
	Name string `json:"name"`
	// Digest is the digest of the linux/amd64 image manifest (sha256:...).
	Digest string `json:"digest"`
	Status Status `json:"status"`
	// QueuePosition is the 1-based place in the wait queue, nil when the
	// image is not waiting (being processed, ready or failed).
	QueuePosition *int `json:"queue_position"`
	// Error is set when Status is failed.
	Error *string `json:"error"`
	// SizeBytes is the size of rootfs.erofs, set once ready.
	SizeBytes  *int64            `json:"size_bytes"`
	Entrypoint []string          `json:"entrypoint"`
	Cmd        []string          `json:"cmd"`
	Env        map[string]string `json:"env"`
	WorkingDir string            `json:"working_dir"`
	User       string            `json:"user"`
	Platform   string            `json:"platform"`
	Tags       map[string]string `json:"tags"`
	CreatedAt  time.Time         `json:"created_at"`
}

// recordSchema is the schema version of metadata.json.
const recordSchema = 1

// record is the persisted state of one digest (metadata.json). It is the only
// form in which image state is written to disk.
type record struct {
	Schema int    `json:"schema_version"`
	Digest string `json:"digest"`
	// Name is the reference the digest was first created under.
	Name string `json:"name"`
	// Names are the tag references that point here, or will once ready.
	Names []string `json:"names"`
	// Source is the repo@digest reference to pull from; empty for images
	// whose blobs were pushed into the layout (ImportLocal).
	Source     string            `json:"source,omitempty"`
	Status     Status            `json:"status"`
	Error      string            `json:"error,omitempty"`
	SizeBytes  int64             `json:"size_bytes,omitempty"`
	Entrypoint []string          `json:"entrypoint,omitempty"`
	Cmd        []string          `json:"cmd,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	WorkingDir string            `json:"working_dir,omitempty"`
	User       string            `json:"user,omitempty"`
	Platform   string            `json:"platform"`
	Tags       map[string]string `json:"tags,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
}

// hasName reports whether n is one of r's tag references.
func (r *record) hasName(n string) bool {
	for _, x := range r.Names {
		if x == n {
			return true
		}
	}
	return false
}

func (r *record) addName(n string) {
	if !r.hasName(n) {
		r.Names = append(r.Names, n)
	}
}

func (r *record) removeName(n string) bool {
	for i, x := range r.Names {
		if x == n {
			r.Names = append(r.Names[:i:i], r.Names[i+1:]...)
			return true
		}
	}
	return false
}

// setConfig copies what instances need from an image config file.
func (r *record) setConfig(cf *v1.ConfigFile) {
	c := cf.Config
	r.Entrypoint = c.Entrypoint
	r.Cmd = c.Cmd
	r.WorkingDir = c.WorkingDir
	r.User = c.User
	r.Env = envMap(c.Env)
	if cf.OS != "" {
		r.Platform = cf.OS + "/" + cf.Architecture
		if cf.Variant != "" {
			r.Platform += "/" + cf.Variant
		}
	}
}

// envMap turns KEY=VALUE pairs into a map; later pairs win.
func envMap(env []string) map[string]string {
	if len(env) == 0 {
		return nil
	}
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// view renders r as seen through reference name. The result shares no
// memory with r.
func (r *record) view(name string, queuePos int) Image {
	img := Image{
		Name:       name,
		Digest:     r.Digest,
		Status:     r.Status,
		Entrypoint: slices.Clone(r.Entrypoint),
		Cmd:        slices.Clone(r.Cmd),
		Env:        maps.Clone(r.Env),
		WorkingDir: r.WorkingDir,
		User:       r.User,
		Platform:   r.Platform,
		Tags:       maps.Clone(r.Tags),
		CreatedAt:  r.CreatedAt,
	}
	if queuePos > 0 && r.Status == StatusPending {
		img.QueuePosition = &queuePos
	}
	if r.Status == StatusFailed {
		msg := r.Error
		img.Error = &msg
	}
	if r.Status == StatusReady {
		size := r.SizeBytes
		img.SizeBytes = &size
	}
	return img
}

// matchesTags reports whether every pair in want is among have.
func matchesTags(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}
