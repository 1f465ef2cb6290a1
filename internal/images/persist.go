package images

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/hypeman-vm/hypeman/internal/atomicfile"
)

// refsSchema is the schema version of refs.json.
const refsSchema = 1

// refsFile is refs.json: every tag reference of a ready image.
type refsFile struct {
	Schema int               `json:"schema_version"`
	Refs   map[string]string `json:"refs"` // normalized reference -> digest hex
}

func loadRefs(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("images: read refs: %w", err)
	}
	var f refsFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("images: parse %s: %w", path, err)
	}
	if f.Schema != refsSchema {
		return nil, fmt.Errorf("images: %s has schema %d, want %d", path, f.Schema, refsSchema)
	}
	if f.Refs == nil {
		f.Refs = map[string]string{}
	}
	return f.Refs, nil
}

// saveRefs writes refs.json. Callers hold mu.
func (m *Manager) saveRefs() error {
	err := atomicfile.WriteJSON(m.paths.ImageRefsFile(), refsFile{Schema: refsSchema, Refs: m.refs})
	if err != nil {
		return fmt.Errorf("images: save refs: %w", err)
	}
	return nil
}

// loadRecords reads every metadata.json and drops references to digests
// that have none.
func (m *Manager) loadRecords() error {
	ents, err := os.ReadDir(m.paths.ImageDigestsDir())
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	for _, e := range ents {
		rec, err := readRecord(m.paths.ImageMetadata(e.Name()))
		if err != nil {
			m.log.Warn("images: skipping unreadable image", "dir", e.Name(), "err", err)
			continue
		}
		m.recs[e.Name()] = rec
	}
	for n, hex := range m.refs {
		if m.recs[hex] == nil {
			delete(m.refs, n)
		}
	}
	return nil
}

func readRecord(path string) (*record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, err
	}
	if rec.Schema != recordSchema {
		return nil, fmt.Errorf("schema %d, want %d", rec.Schema, recordSchema)
	}
	return &rec, nil
}

// requeue queues, oldest first, the images a previous run left unfinished,
// and ready images whose rootfs has gone missing.
func (m *Manager) requeue() {
	var todo []*record
	for hex, rec := range m.recs {
		_, err := os.Stat(m.paths.ImageRootfs(hex))
		if rec.Status == StatusPending || rec.Status == StatusPulling || rec.Status == StatusConverting ||
			(rec.Status == StatusReady && err != nil) {
			todo = append(todo, rec)
		}
	}
	sort.Slice(todo, func(i, j int) bool { return todo[i].CreatedAt.Before(todo[j].CreatedAt) })
	for _, rec := range todo {
		m.log.Info("images: resuming interrupted image", "digest", rec.Digest, "status", rec.Status)
		rec.Status = StatusPending
		m.q.enqueue(hexOf(rec))
	}
}
