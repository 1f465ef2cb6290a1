package instances

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hypeman-vm/hypeman/internal/cuid"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
)

// freezeRunning freezes a Running instance's disk and RAM so that forks or
// a snapshot can share them, and keeps the instance running: a new VMM
// (the next generation) is started first, waiting for state, over the new
// overlay, the frozen RAM mapped privately and a second TAP; then the
// guest migrates live into it (RAM is in the shared file, so only device
// state moves; the guest pauses only for the final step) and the old VMM
// ends. The migration stream is kept as the state file forks and
// snapshots start from. It returns that file (immutable: link it, do not
// change it; the caller removes it) and how long the guest was paused.
func (m *Manager) freezeRunning(ctx context.Context, meta *Metadata) (state string, pause time.Duration, err error) {
	old := m.currentVM(meta.ID)
	if old == nil {
		return "", 0, fmt.Errorf("no VM for %s", meta.ID)
	}
	mig, ok := old.vm.(hypervisor.Migrator)
	hv, ok2 := m.hvs[hypervisor.Type(meta.Hypervisor)].(hypervisor.Restorer)
	if !ok || !ok2 {
		return "", 0, errdefs.Newf(errdefs.ErrNotImplemented, "not_supported", "hypervisor %s cannot take snapshots", meta.Hypervisor)
	}
	img, err := m.images.ByDigest(ctx, meta.ImageDigest)
	if err != nil {
		return "", 0, err
	}
	sw := &switchOp{m: m, cur: meta, old: old, mig: mig, hv: hv, img: img,
		plan: planFreeze(meta, true), dir: filepath.Join(m.paths.InstanceDir(meta.ID), "switch-"+cuid.New())}
	sw.next = meta.clone()
	err = m.runSteps(ctx, "freeze-running", []step{
		{name: "record", do: sw.record, undo: sw.unrecord},
		{name: "freeze-files", do: sw.freezeFiles, undo: sw.thawFiles},
		{name: "tap", do: sw.attachTAP, undo: sw.detachTAP},
		{name: "start-vmm", do: sw.startVMM, undo: sw.killNew},
		{name: "migrate", do: sw.migrate, undo: sw.resumeOld},
		{name: "commit", do: sw.commit},
	})
	if err != nil {
		return "", 0, err
	}
	return statePath(sw.dir), sw.pause, nil
}

// switchOp is the state of one freezeRunning.
type switchOp struct {
	m     *Manager
	cur   *Metadata // the instance now (updated by commit)
	next  *Metadata // the instance on its new VMM
	old   *runningVM
	mig   hypervisor.Migrator
	hv    hypervisor.Restorer
	img   Image
	plan  freezePlan
	dir   string
	newVM hypervisor.VM
	pause time.Duration
}

func (s *switchOp) record(ctx context.Context) error {
	s.cur.Pending, s.cur.Freeze = "switch", &s.plan
	return saveMetadata(s.m.paths.InstanceMetadata(s.cur.ID), s.cur)
}

func (s *switchOp) unrecord(ctx context.Context) {
	s.cur.Pending, s.cur.Freeze = "", nil
	_ = saveMetadata(s.m.paths.InstanceMetadata(s.cur.ID), s.cur)
}

// freezeFiles hard-links the overlay and the RAM file into the shared
// dirs while the old VM still runs: it keeps writing the same inodes until
// the pause, so what is frozen is the state at the pause. Links, not
// renames: QEMU reopens its images by name when it hands them over at the
// end of the state save. commit removes the old names.
func (s *switchOp) freezeFiles(ctx context.Context) error {
	m, id := s.m, s.cur.ID
	if err := linkInto(m.overlayPath(s.cur), m.paths.Layer(s.plan.Layer)); err != nil {
		return err
	}
	if err := m.storage.CreateOverlayOn(ctx, m.paths.InstanceOverlay(id, s.plan.NewOverlay), m.paths.Layer(s.plan.Layer)); err != nil {
		return err
	}
	s.next.Overlay = s.plan.NewOverlay
	s.next.Layers = append(s.next.Layers, s.plan.Layer)
	if s.plan.Memory != "" {
		if err := linkInto(m.paths.InstanceMemory(id), m.paths.MemoryBase(s.plan.Memory)); err != nil {
			return err
		}
		s.next.MemoryBase = m.paths.MemoryBase(s.plan.Memory)
	}
	s.next.VMMGen = s.cur.VMMGen + 1
	s.next.Pending, s.next.Freeze = "", nil
	return nil
}

// thawFiles undoes freezeFiles: the files stay where the old VM's
// metadata expects them.
func (s *switchOp) thawFiles(ctx context.Context) {
	m, id := s.m, s.cur.ID
	_ = os.Remove(m.paths.InstanceOverlay(id, s.plan.NewOverlay))
	unlinkFrozen(m.overlayPath(s.cur), m.paths.Layer(s.plan.Layer), 0o644)
	if s.plan.Memory != "" {
		unlinkFrozen(m.paths.InstanceMemory(id), m.paths.MemoryBase(s.plan.Memory), 0o600)
	}
}

// linkInto makes dst a second name of src.
func linkInto(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Link(src, dst); err != nil {
		return fmt.Errorf("freeze %s: %w", src, err)
	}
	return nil
}

// unlinkFrozen removes the frozen name of a file that still has its own
// name, or moves it back when it has not.
func unlinkFrozen(own, frozen string, mode os.FileMode) {
	if !fileExists(frozen) {
		return
	}
	if fileExists(own) {
		_ = os.Remove(frozen)
		return
	}
	_ = os.Rename(frozen, own)
	_ = os.Chmod(own, mode)
}

// dropOwnNames removes the old names of the files now frozen (the old VM
// is gone) and makes the frozen files read-only.
func (s *switchOp) dropOwnNames() {
	m, id := s.m, s.cur.ID
	_ = os.Remove(m.overlayPath(s.cur))
	_ = os.Chmod(m.paths.Layer(s.plan.Layer), 0o444)
	if s.plan.Memory != "" {
		_ = os.Remove(m.paths.InstanceMemory(id))
		_ = os.Chmod(m.paths.MemoryBase(s.plan.Memory), 0o444)
	}
}

// attachTAP gives the new VMM a second TAP: the old one is still open.
func (s *switchOp) attachTAP(ctx context.Context) error {
	n := s.cur.Network
	if !n.Enabled || n.TAP == "" {
		return nil
	}
	a, err := allocationOf(n)
	if err != nil {
		return err
	}
	a.TAP = s.m.net.AltTAPName(s.cur.ID)
	if a.TAP == n.TAP {
		a.TAP = tapNameFor(s.cur.ID) // switching back from the alternate
	}
	s.next.Network.TAP = a.TAP
	return s.m.net.AttachTAP(ctx, a, true)
}

func (s *switchOp) detachTAP(ctx context.Context) {
	if t := s.next.Network.TAP; t != "" && t != s.cur.Network.TAP {
		_ = s.m.net.DetachTAP(ctx, t)
	}
}

func (s *switchOp) startVMM(ctx context.Context) (err error) {
	s.newVM, err = s.hv.StartIncoming(ctx, s.m.vmSpec(s.next, s.img))
	return err
}

func (s *switchOp) killNew(ctx context.Context) {
	_ = s.newVM.Kill()
	_ = s.newVM.Wait(ctx)
	for _, p := range []string{s.m.paths.InstanceQMPSocket(s.cur.ID, s.next.VMMGen), s.m.paths.InstanceAgentSocket(s.cur.ID, s.next.VMMGen), s.m.paths.InstanceBulkSocket(s.cur.ID, s.next.VMMGen),
		s.m.paths.InstancePIDFile(s.cur.ID, s.next.VMMGen)} {
		_ = os.Remove(p)
	}
}

// migrate moves the guest into the new VMM and keeps the stream in the
// state file, made durable after the guest runs again.
func (s *switchOp) migrate(ctx context.Context) error {
	_ = os.RemoveAll(s.dir)
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(statePath(s.dir))
	if err != nil {
		return err
	}
	defer f.Close()
	if s.pause, err = s.mig.MigrateTo(ctx, s.newVM, f); err != nil {
		return err
	}
	return f.Sync()
}

// resumeOld makes sure the old VM runs (a failed migration leaves it
// paused only if it failed at the very end).
func (s *switchOp) resumeOld(ctx context.Context) {
	if sn, ok := s.old.vm.(hypervisor.Snapshotter); ok {
		if st, err := s.old.vm.Status(ctx); err == nil && st == hypervisor.StatusPaused {
			_ = sn.Resume(ctx)
		}
	}
}

// commit makes the new VMM the instance's: metadata first, then the old
// VMM and its TAP go.
func (s *switchOp) commit(ctx context.Context) error {
	m, id := s.m, s.cur.ID
	if err := saveMetadata(m.paths.InstanceMetadata(id), s.next); err != nil {
		return err
	}
	m.watch(id, s.newVM, s.next.Boot, true) // before the old VM's exit is seen
	_ = s.old.vm.Kill()
	_ = s.old.vm.Wait(ctx)
	if t := s.cur.Network.TAP; t != "" && t != s.next.Network.TAP {
		_ = m.net.DetachTAP(ctx, t)
	}
	for _, p := range []string{m.paths.InstanceQMPSocket(id, s.cur.VMMGen), m.paths.InstanceAgentSocket(id, s.cur.VMMGen), m.paths.InstanceBulkSocket(id, s.cur.VMMGen),
		m.paths.InstancePIDFile(id, s.cur.VMMGen)} {
		_ = os.Remove(p)
	}
	s.dropOwnNames()
	*s.cur = *s.next
	m.dropAgent(id)
	return nil
}

// tapNameFor is the default TAP name of an instance (network.TAPName).
func tapNameFor(id string) string {
	if len(id) > 13 {
		id = id[:13]
	}
	return "hm" + id
}
