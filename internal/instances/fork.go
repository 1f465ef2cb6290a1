package instances

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hypeman-vm/hypeman/internal/cuid"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// ForkRequest asks for a new instance cloned from another.
type ForkRequest struct {
	Name string
	// FromRunning allows forking a Running source: it is frozen in place
	// (a pause of a few tens of milliseconds) and keeps running.
	FromRunning bool
	// TargetState is Stopped, Standby or Running; empty means the source's
	// state.
	TargetState State
}

// Fork clones an instance (Stopped, Standby, or Running with FromRunning)
// into a new one, without copying disk or memory: the source's overlay
// and RAM are frozen and shared copy-on-write (see freeze.go). A fork that
// resumes from memory gets its own address, MAC, hostname, clock and
// entropy inside the guest before it is reported Running. On failure the
// half-made fork is removed and a Running source keeps running.
func (m *Manager) Fork(ctx context.Context, ref string, req ForkRequest) (Instance, error) {
	start := time.Now()
	if !ValidName(req.Name) {
		return Instance{}, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request", "invalid fork name %q", req.Name)
	}
	switch req.TargetState {
	case "", StateStopped, StateStandby, StateRunning:
	default:
		return Instance{}, errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request",
			"invalid target_state %q: must be Stopped, Standby or Running", req.TargetState)
	}
	src, inst, unlockSrc, err := m.loadForOp(ctx, ref)
	if err != nil {
		return Instance{}, err
	}
	// The source is locked while it is frozen and the fork's files are
	// made; bringing the fork to its target state needs only the fork, so
	// concurrent forks of one source overlap there.
	locked := true
	unlock := func() {
		if locked {
			locked = false
			unlockSrc()
		}
	}
	defer unlock()
	target, err := forkTarget(inst.State, req)
	if err != nil {
		return Instance{}, err
	}
	if src.SkipGuestAgent && target != StateStopped && inst.State != StateStopped {
		return Instance{}, errdefs.Newf(errdefs.ErrConflict, "invalid_state",
			"instance %s runs without the guest agent: a fork resumed from memory could not take a new identity; use target_state Stopped", src.Name)
	}
	release, err := m.reserveName(ctx, req.Name)
	if err != nil {
		return Instance{}, err
	}
	defer release()
	f := &forkOp{m: m, src: src, srcState: inst.State, target: target, name: req.Name, unlockSource: unlock}
	err = f.run(ctx)
	detail := fmt.Sprintf("fork %s from %s", req.Name, inst.State)
	m.opLog(src.ID, "fork", start, err, detail)
	if err != nil {
		return Instance{}, err
	}
	m.opLog(f.fork.ID, "create-fork", start, nil, fmt.Sprintf("from %s (%s), source %s, pause %v", src.Name, src.ID, inst.State, f.frozen.pause.Round(time.Microsecond)))
	m.notify()
	return m.view(f.fork), nil
}

// forkTarget applies the reference's rules on source states.
func forkTarget(state State, req ForkRequest) (State, error) {
	switch state {
	case StateStopped, StateStandby:
	case StateRunning:
		if !req.FromRunning {
			return "", errdefs.Newf(errdefs.ErrConflict, "invalid_state",
				"invalid state transition: cannot fork from state Running (set from_running=true to allow standby+restore flow)")
		}
	default:
		return "", errdefs.Newf(errdefs.ErrConflict, "invalid_state",
			"invalid state transition: cannot fork from state %s (must be Stopped or Standby, or Running with from_running=true)", state)
	}
	if req.TargetState != "" {
		return req.TargetState, nil
	}
	return state, nil
}

// forkOp is one fork in progress.
type forkOp struct {
	m        *Manager
	src      *Metadata
	srcState State
	target   State
	name     string
	fork     *Metadata
	frozen   frozenImage // the source's frozen files
	// unlockSource releases the source's lock once the fork's files exist.
	unlockSource func()
}

func (f *forkOp) run(ctx context.Context) error {
	defer func() {
		if f.frozen.cleanup != "" {
			_ = os.RemoveAll(f.frozen.cleanup)
		}
	}()
	defer f.releaseFrozen() // on failure; the source is still locked
	return f.m.runSteps(ctx, "fork", []step{
		{name: "freeze-source", do: f.freezeSource},
		{name: "make-fork", do: f.makeFork, undo: f.removeFork},
		{name: "release-source", do: f.releaseSource},
		{name: "target-state", do: f.reachTarget},
		{name: "commit", do: f.commit},
	})
}

// releaseSource lets other operations on the source proceed: from here on
// only the fork (still Creating, so invisible) is touched. The state file
// of a switch stays until the end: the fork's standby links it already.
func (f *forkOp) releaseSource(ctx context.Context) error {
	f.releaseFrozen()
	if f.unlockSource != nil {
		f.unlockSource()
	}
	return nil
}

// commit makes the fork visible: until now it was Creating, so a daemon
// killed at any earlier point removes it at startup.
func (f *forkOp) commit(ctx context.Context) error {
	f.fork.Creating = false
	return saveMetadata(f.m.paths.InstanceMetadata(f.fork.ID), f.fork)
}

// freezeSource shares the source's disk (and RAM, when the fork may
// resume from memory) without copying.
func (f *forkOp) freezeSource(ctx context.Context) (err error) {
	f.frozen, err = f.m.freezeFor(ctx, f.src, f.srcState)
	return err
}

// releaseFrozen lets go of the source's hold on its clones: the fork's
// metadata names them now (or the fork is gone).
func (f *forkOp) releaseFrozen() {
	if r := f.frozen.release; r != nil {
		f.frozen.release = nil
		r()
	}
}

// makeFork writes the fork's dir: metadata (with Creating set until done),
// its overlay on the source's new layer, and, when it resumes from
// memory, a standby snapshot: the device state hard-linked (both files are
// immutable) and a manifest naming the frozen RAM.
func (f *forkOp) makeFork(ctx context.Context) error {
	m, src := f.m, f.src
	fork := src.clone()
	fork.ID, fork.Name, fork.CreatedAt = cuid.New(), f.name, time.Now().UTC()
	fork.StartedAt, fork.StoppedAt, fork.ExitCode, fork.ExitMessage = nil, nil, nil, ""
	fork.ProgramStartedAt, fork.AgentReadyAt = nil, nil
	fork.Network = NetworkMeta{Enabled: src.Network.Enabled}
	fork.Overlay, fork.VMMGen, fork.Pending, fork.Freeze, fork.Creating = "overlay-0.qcow2", 0, "", nil, true
	fork.Clones = nil
	fork.Layers = append([]string(nil), f.frozen.layers...)
	if f.frozen.state == "" || f.target == StateStopped {
		fork.MemoryBase = ""
	} else {
		fork.MemoryBase = f.frozen.memory
		fork.Inherited, fork.InheritedMAC = true, src.Network.MAC
		if src.Inherited {
			fork.InheritedMAC = src.InheritedMAC
		}
	}
	f.fork = fork
	id := fork.ID
	if err := os.MkdirAll(m.paths.InstanceLogsDir(id), 0o755); err != nil {
		return err
	}
	if err := saveMetadata(m.paths.InstanceMetadata(id), fork); err != nil {
		return err
	}
	if err := m.storage.CreateOverlayOn(ctx, m.overlayPath(fork), m.paths.Layer(fork.Layers[len(fork.Layers)-1])); err != nil {
		return err
	}
	if err := m.writeConfigDisk(ctx, fork); err != nil {
		return err
	}
	if fork.MemoryBase != "" {
		if err := f.linkStandby(); err != nil {
			return err
		}
	}
	return saveMetadata(m.paths.InstanceMetadata(id), fork)
}

func (f *forkOp) linkStandby() error {
	m, fork := f.m, f.fork
	dir := m.paths.InstanceStandbyDir(fork.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Link(f.frozen.state, statePath(dir)); err != nil {
		return fmt.Errorf("link device state: %w", err)
	}
	if err := copyFile(m.paths.InstanceEvents(f.src.ID), m.paths.InstanceEvents(fork.ID)); err != nil {
		return err
	}
	return writeManifest(dir, manifest{Memory: fork.MemoryBase, MemoryBytes: fork.MemoryBytes})
}

func (f *forkOp) removeFork(ctx context.Context) {
	if f.fork == nil {
		return
	}
	if err := f.m.deleteLocked(ctx, f.fork.ID, false); err != nil {
		f.m.log.Warn("remove half-made fork", "id", f.fork.ID, "err", err)
	}
}

// reachTarget brings the fork to its target state.
func (f *forkOp) reachTarget(ctx context.Context) error {
	m, fork := f.m, f.fork
	unlock := m.lock(fork.ID)
	defer unlock()
	switch {
	case fork.MemoryBase != "" && f.target == StateRunning:
		return m.resume(ctx, fork)
	case fork.MemoryBase != "": // Standby
		return nil
	case f.target == StateStopped:
		return nil
	}
	// From a disk only: boot it.
	img, err := m.images.ByDigest(ctx, fork.ImageDigest)
	if err != nil {
		return err
	}
	if err := m.bootFresh(ctx, fork, img); err != nil {
		return err
	}
	if f.target == StateStandby {
		if err := m.waitBooted(ctx, fork.ID); err != nil {
			return err
		}
		return m.standby(ctx, fork)
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
