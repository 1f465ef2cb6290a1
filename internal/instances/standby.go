package instances

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
	"github.com/hypeman-vm/hypeman/internal/storage"
)

// Standby puts a Running instance into standby: pause the VM, save its
// device state (guest RAM already lives in the instance's memory file, so
// nothing else is copied), end the VM process and delete its TAP. The
// instance keeps its address and MAC for the restore. The snapshot exists
// from the moment its manifest is written; a daemon killed before that
// finds the VM paused and resumes it (Recover).
func (m *Manager) Standby(ctx context.Context, ref string) (Instance, error) {
	start := time.Now()
	meta, inst, unlock, err := m.loadForOp(ctx, ref)
	if err != nil {
		return Instance{}, err
	}
	if err := checkTransition(opStandby, inst.State); err != nil {
		unlock()
		return Instance{}, err
	}
	detach, err := m.standbyDetachLater(ctx, meta)
	m.opLog(meta.ID, "standby", start, err, "")
	if err != nil {
		unlock()
		return Instance{}, err
	}
	view := m.view(meta)
	m.afterAnswer(meta.ID, func() { defer unlock(); detach() })
	return view, nil
}

// afterAnswer runs f in the background, as part of the operation that
// just answered: f must hold on to the instance's lock (so that the next
// operation on the instance waits for it), and the manager's Close waits
// for it.
func (m *Manager) afterAnswer(id string, f func()) {
	m.watchers.Add(1)
	go func() {
		defer m.watchers.Done()
		start := time.Now()
		f()
		m.log.Debug("finished after the answer", "id", id, "took", time.Since(start))
	}()
}

// currentVM returns the VM the manager watches for id.
func (m *Manager) currentVM(id string) *runningVM {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.vms[id]
}

// standby is Standby with the instance lock held.
func (m *Manager) standby(ctx context.Context, meta *Metadata) error {
	detach, err := m.standbyDetachLater(ctx, meta)
	detach()
	return err
}

// standbyDetachLater is standby but for deleting the TAP, which it
// returns (always non-nil): deleting a network device waits for the
// kernel's RCU grace periods (10-20 ms here), and nothing but the next
// restore needs it gone. The caller runs it under the instance lock.
func (m *Manager) standbyDetachLater(ctx context.Context, meta *Metadata) (detach func(), err error) {
	detach = func() {}
	rv := m.currentVM(meta.ID)
	if rv == nil {
		return detach, fmt.Errorf("standby: no VM for %s", meta.ID)
	}
	snap, ok := rv.vm.(hypervisor.Snapshotter)
	if !ok {
		return detach, errdefs.Newf(errdefs.ErrNotImplemented, "not_supported", "hypervisor %s cannot take snapshots", meta.Hypervisor)
	}
	dir := m.paths.InstanceStandbyDir(meta.ID)
	meta.Pending = "standby"
	if err := saveMetadata(m.paths.InstanceMetadata(meta.ID), meta); err != nil {
		return detach, err
	}
	err = m.runSteps(ctx, "standby", []step{
		{name: "detach-agent", do: func(ctx context.Context) error { m.detachAgent(ctx, meta); return nil }},
		{name: "pause", do: snap.Pause, undo: func(ctx context.Context) { _ = snap.Resume(ctx) }},
		{name: "save-state", do: func(ctx context.Context) error { return m.saveState(ctx, snap, dir) },
			undo: func(context.Context) { _ = os.RemoveAll(dir) }},
		{name: "write-manifest", do: func(context.Context) error { return writeManifest(dir, m.memoryManifest(meta)) }},
	})
	if err != nil {
		meta.Pending = ""
		_ = saveMetadata(m.paths.InstanceMetadata(meta.ID), meta)
		return detach, err
	}
	// The snapshot is complete: from here on, finish whatever happens.
	tap := meta.Network.TAP
	m.finishStandby(ctx, meta, rv, false)
	if meta.MemoryBase == "" {
		go m.writeBackMemory(meta.ID)
	}
	if tap == "" {
		return detach, nil
	}
	return func() {
		if err := m.net.DetachTAP(context.WithoutCancel(ctx), tap); err != nil {
			m.log.Warn("delete TAP after standby", "id", meta.ID, "tap", tap, "err", err)
		}
	}, nil
}

// detachAgent has the guest agent leave its session before the VM is saved,
// so that the VMs resumed from the state (the restore, every fork) answer
// their first Hello without tearing an old session down. Best effort: a
// guest that does not answer in time is saved mid-session, which its
// resume handles too.
func (m *Manager) detachAgent(ctx context.Context, meta *Metadata) {
	if meta.SkipGuestAgent {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if err := m.agentFor(meta.ID, meta.VMMGen).Detach(ctx); err != nil {
		m.log.Debug("guest agent did not detach before the save", "id", meta.ID, "err", err)
	}
}

// writeBackMemory writes a standby instance's RAM file to disk in the
// background: the guest's pages are in the page cache until then, and a
// later fork that clones the file (clone.go) would wait for that
// write-back inside its request. A restore stops it (stopWriteBack): its
// VM would wait for every page it writes that is still in flight.
func (m *Manager) writeBackMemory(id string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wb := &writeBack{cancel: cancel}
	m.mu.Lock()
	if prev := m.writing[id]; prev != nil {
		prev.cancel()
	}
	m.writing[id] = wb
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		if m.writing[id] == wb { // not a later standby's
			delete(m.writing, id)
		}
		m.mu.Unlock()
	}()
	start := time.Now()
	if err := storage.WriteBack(ctx, m.paths.InstanceMemory(id), writeBackChunk); err != nil {
		m.log.Debug("write back RAM file after standby", "id", id, "err", err, "after", time.Since(start))
		return
	}
	m.log.Debug("RAM file written back after standby", "id", id, "took", time.Since(start))
}

// writeBack is one running writeBackMemory.
type writeBack struct{ cancel context.CancelFunc }

// writeBackChunk is how much of a RAM file is in flight at a time: 8 MiB
// take about 25 ms to write here.
const writeBackChunk = 8 << 20

// stopWriteBack stops the background write-back of id's RAM file.
func (m *Manager) stopWriteBack(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if wb := m.writing[id]; wb != nil {
		wb.cancel()
	}
}

// saveState writes the VM's device state into a fresh snapshot dir.
func (m *Manager) saveState(ctx context.Context, snap hypervisor.Snapshotter, dir string) error {
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return snap.SaveState(ctx, statePath(dir))
}

// memoryManifest describes where the instance's RAM is.
func (m *Manager) memoryManifest(meta *Metadata) manifest {
	if meta.MemoryBase != "" {
		return manifest{Memory: meta.MemoryBase, MemoryBytes: meta.MemoryBytes}
	}
	return manifest{Memory: m.paths.InstanceMemory(meta.ID), MemoryShared: true, MemoryBytes: meta.MemoryBytes}
}

// finishStandby ends the paused VM whose snapshot is complete and, with
// detachTAP, deletes its TAP; the address stays reserved for the restore.
func (m *Manager) finishStandby(ctx context.Context, meta *Metadata, rv *runningVM, detachTAP bool) {
	var errs []error
	t0 := time.Now()
	if rv != nil {
		if err := rv.vm.Kill(); err == nil {
			_ = rv.vm.Wait(ctx)
		}
	}
	t1 := time.Now()
	if tap := meta.Network.TAP; tap != "" && detachTAP {
		if err := m.net.DetachTAP(ctx, tap); err != nil {
			errs = append(errs, err)
		}
	}
	t2 := time.Now()
	for _, p := range []string{m.paths.InstancePIDFile(meta.ID, meta.VMMGen), m.paths.InstanceQMPSocket(meta.ID, meta.VMMGen),
		m.paths.InstanceAgentSocket(meta.ID, meta.VMMGen), m.paths.InstanceBulkSocket(meta.ID, meta.VMMGen)} {
		_ = os.Remove(p)
	}
	now := time.Now().UTC()
	meta.StoppedAt, meta.Pending = &now, ""
	if err := saveMetadata(m.paths.InstanceMetadata(meta.ID), meta); err != nil {
		errs = append(errs, err)
	}
	t3 := time.Now()
	m.dropAgent(meta.ID)
	if rv != nil {
		m.forgetVM(meta.ID, rv)
	} else {
		m.notify()
	}
	m.log.Debug("standby finished", "id", meta.ID, "end-vmm", t1.Sub(t0), "detach-tap", t2.Sub(t1),
		"save-metadata", t3.Sub(t2), "forget", time.Since(t3))
	if len(errs) > 0 {
		m.log.Warn("standby finished with errors", "id", meta.ID, "errs", errs)
	}
}
