package instances

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

func TestResolve(t *testing.T) {
	e := newEnv(t)
	const (
		idA1 = "aaaa00000000000000000001"
		idA2 = "aaaa00000000000000000002"
		idB  = "bbbb00000000000000000001"
		idC  = "cccc00000000000000000001"
	)
	e.writeMeta(t, &Metadata{ID: idA1, Name: "bbbb"}) // a name that is also a prefix of idB
	e.writeMeta(t, &Metadata{ID: idA2, Name: "two"})
	e.writeMeta(t, &Metadata{ID: idB, Name: "three"})
	e.writeMeta(t, &Metadata{ID: idC, Name: "half", Creating: true})
	if err := os.WriteFile(e.paths.InstanceMetadata(idA2)+".junk", nil, 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		ref   string
		want  string
		class error
		code  string
	}{
		{ref: idA1, want: idA1},
		{ref: idA2, want: idA2},
		{ref: "two", want: idA2},
		{ref: "bbbb", want: idA1}, // exact name before ID prefix
		{ref: "bbb", want: idB},   // unique prefix
		{ref: "aaaa", class: errdefs.ErrAmbiguous, code: "ambiguous"},
		{ref: "a", class: errdefs.ErrAmbiguous, code: "ambiguous"},
		{ref: "zzz", class: errdefs.ErrNotFound, code: "not_found"},
		{ref: "", class: errdefs.ErrNotFound, code: "not_found"},
		{ref: ".", class: errdefs.ErrNotFound, code: "not_found"},
		{ref: "..", class: errdefs.ErrNotFound, code: "not_found"},
		{ref: "../instances", class: errdefs.ErrNotFound, code: "not_found"},
		{ref: idC, class: errdefs.ErrNotFound, code: "not_found"}, // still being created
		{ref: "half", class: errdefs.ErrNotFound, code: "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			got, err := e.m.Resolve(context.Background(), tt.ref)
			if tt.class != nil {
				wantCode(t, err, tt.class, tt.code)
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("Resolve(%q) = %q, %v; want %q", tt.ref, got, err, tt.want)
			}
		})
	}
	_, err := e.m.Resolve(context.Background(), "aaaa")
	if want := "multiple resources match, use full ID"; errdefs.Message(err) != want {
		t.Errorf("ambiguous message %q, want %q", errdefs.Message(err), want)
	}
}

func TestResolveDuplicateNames(t *testing.T) {
	e := newEnv(t)
	e.writeMeta(t, &Metadata{ID: "dddd00000000000000000001", Name: "dup"})
	e.writeMeta(t, &Metadata{ID: "eeee00000000000000000001", Name: "dup"})
	_, err := e.m.Resolve(context.Background(), "dup")
	wantCode(t, err, errdefs.ErrAmbiguous, "ambiguous")
}

func TestGetUnreadableMetadataIsUnknown(t *testing.T) {
	e := newEnv(t)
	id := "ffff00000000000000000001"
	if err := os.MkdirAll(e.paths.InstanceDir(id), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.paths.InstanceMetadata(id), []byte(`{"schema_version":99}`), 0o644); err != nil {
		t.Fatal(err)
	}
	inst, err := e.m.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if inst.State != StateUnknown || inst.StateError == "" || inst.ID != id {
		t.Errorf("got %+v, want Unknown with a state error", inst)
	}
}

func TestListFilters(t *testing.T) {
	e := newEnv(t)
	base := time.Now().UTC().Add(-time.Hour)
	e.writeMeta(t, &Metadata{ID: "s1000000000000000000000a", Name: "stopped-a", CreatedAt: base,
		Tags: map[string]string{"team": "a", "env": "prod"}})
	e.writeMeta(t, &Metadata{ID: "s2000000000000000000000b", Name: "stopped-b", CreatedAt: base.Add(time.Minute),
		Tags: map[string]string{"team": "b"}})
	e.writeMeta(t, &Metadata{ID: "s3000000000000000000000c", Name: "creating", CreatedAt: base, Creating: true,
		Tags: map[string]string{"team": "a"}})
	e.create(t, "init")
	runID, err := e.m.Create(context.Background(), CreateRequest{Name: "run", Image: "x",
		Tags: map[string]string{"team": "a"}, SkipGuestAgent: true})
	if err != nil {
		t.Fatal(err)
	}
	e.markStarted(t, runID.ID)
	e.waitState(t, "run", StateRunning)

	tests := []struct {
		name  string
		state State
		tags  map[string]string
		want  []string
	}{
		{"all, oldest first", "", nil, []string{"stopped-a", "stopped-b", "init", "run"}},
		{"Stopped", StateStopped, nil, []string{"stopped-a", "stopped-b"}},
		{"Running", StateRunning, nil, []string{"run"}},
		{"Initializing", StateInitializing, nil, []string{"init"}},
		{"Standby", StateStandby, nil, nil},
		{"tag", "", map[string]string{"team": "a"}, []string{"stopped-a", "run"}},
		{"two tags (AND)", "", map[string]string{"team": "a", "env": "prod"}, []string{"stopped-a"}},
		{"tag value differs", "", map[string]string{"team": "c"}, nil},
		{"state and tag", StateRunning, map[string]string{"team": "a"}, []string{"run"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			list, err := e.m.List(context.Background(), tt.state, tt.tags)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, in := range list {
				got = append(got, in.Name)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}
