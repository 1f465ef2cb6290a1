package instances

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"time"

	"github.com/hypeman-vm/hypeman/internal/agent"
	"github.com/hypeman-vm/hypeman/internal/agent/proto"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
)

// Restore resumes a Standby instance from its snapshot in a new VM
// process, with the same address and MAC; the program continues where it
// was. The guest clock is stepped to the host's time after the resume.
func (m *Manager) Restore(ctx context.Context, ref string) (Instance, error) {
	start := time.Now()
	meta, inst, unlock, err := m.loadForOp(ctx, ref)
	if err != nil {
		return Instance{}, err
	}
	defer unlock()
	if err := checkTransition(opRestore, inst.State); err != nil {
		return Instance{}, err
	}
	err = m.resume(ctx, meta)
	m.opLog(meta.ID, "restore", start, err, "")
	if err != nil {
		return Instance{}, err
	}
	return m.view(meta), nil
}

// resume restores meta's VM from its standby snapshot. A fork (Inherited
// set) gets a new address, MAC and hostname inside the guest, fresh
// entropy, and its TAP stays down until the guest has taken them, all
// before it counts as Running. The caller holds the instance lock.
func (m *Manager) resume(ctx context.Context, meta *Metadata) error {
	m.stopWriteBack(meta.ID)
	dir := m.paths.InstanceStandbyDir(meta.ID)
	man, err := readManifest(dir)
	if err != nil {
		return damaged("the standby snapshot of "+meta.Name, "unreadable manifest: %v", err)
	}
	if err := verify("the standby snapshot of "+meta.Name, dir, man); err != nil {
		return err
	}
	img, err := m.images.ByDigest(ctx, meta.ImageDigest)
	if err != nil {
		return errdefs.Newf(errdefs.ErrNotFound, "not_found", "instance image not found: %v", errdefs.Message(err))
	}
	hv, ok := m.hvs[hypervisor.Type(meta.Hypervisor)].(hypervisor.Restorer)
	if !ok {
		return errdefs.Newf(errdefs.ErrNotImplemented, "not_supported", "hypervisor %s cannot restore snapshots", meta.Hypervisor)
	}
	fork := meta.Inherited
	meta.Pending = "restore"
	if err := saveMetadata(m.paths.InstanceMetadata(meta.ID), meta); err != nil {
		return err
	}
	var vm hypervisor.VM
	err = m.runSteps(ctx, "restore", []step{
		{name: "network", do: func(ctx context.Context) error { return m.attachNetwork(ctx, meta, fork) },
			undo: func(ctx context.Context) { m.detachNetwork(ctx, meta, fork) }},
		{name: "restore-vm", do: func(ctx context.Context) (err error) {
			vm, err = m.restoreVM(ctx, hv, meta, img, statePath(dir))
			return err
		}, undo: func(ctx context.Context) { _ = vm.Kill(); _ = vm.Wait(ctx) }},
		{name: "guest", do: func(ctx context.Context) error { return m.refreshGuest(ctx, meta) }},
	})
	meta.Pending = ""
	if err != nil {
		_ = saveMetadata(m.paths.InstanceMetadata(meta.ID), meta)
		return err
	}
	now := time.Now().UTC()
	if meta.StartedAt == nil {
		meta.StartedAt = &now
	}
	meta.StoppedAt, meta.Inherited, meta.InheritedMAC = nil, false, ""
	// The program was running when the state was saved: a VM resumed from
	// it has completed its boot (a fork or a snapshot's instance has no
	// boot of its own to record it; a restarted daemon reads these).
	if meta.ProgramStartedAt == nil {
		meta.ProgramStartedAt = &now
	}
	if meta.AgentReadyAt == nil && !meta.SkipGuestAgent {
		meta.AgentReadyAt = &now
	}
	if err := saveMetadata(m.paths.InstanceMetadata(meta.ID), meta); err != nil {
		return err
	}
	m.watch(meta.ID, vm, meta.Boot, true)
	_ = os.RemoveAll(dir) // the VM runs: the snapshot is spent
	m.notify()
	return nil
}

// attachNetwork gives a restoring VM its TAP: the same address and MAC for
// an instance's own restore; a new identity for a fork, with its TAP down.
func (m *Manager) attachNetwork(ctx context.Context, meta *Metadata, fork bool) error {
	if !meta.Network.Enabled {
		return nil
	}
	if fork {
		if err := m.allocateNetwork(ctx, meta); err != nil {
			return err
		}
		return m.net.SetTAPUp(ctx, meta.Network.TAP, false)
	}
	a, err := allocationOf(meta.Network)
	if err != nil {
		return err
	}
	return m.net.AttachTAP(ctx, a, true)
}

func (m *Manager) detachNetwork(ctx context.Context, meta *Metadata, fork bool) {
	if fork {
		_ = m.releaseNetwork(ctx, meta)
		return
	}
	if meta.Network.TAP != "" {
		_ = m.net.DetachTAP(ctx, meta.Network.TAP)
	}
}

// restoreVM starts a VMM from the saved state and resumes the guest.
func (m *Manager) restoreVM(ctx context.Context, hv hypervisor.Restorer, meta *Metadata, img Image, state string) (hypervisor.VM, error) {
	if err := linkOrCopy(m.cfg.Boot.Initrd, m.paths.InstanceInitrd(meta.ID)); err != nil && !fileExists(m.paths.InstanceInitrd(meta.ID)) {
		return nil, err
	}
	vm, err := hv.Restore(ctx, m.vmSpec(meta, img), state)
	if err != nil {
		return nil, err
	}
	m.preconnectAgent(ctx, meta)
	if err := vm.(hypervisor.Snapshotter).Resume(ctx); err != nil {
		_ = vm.Kill()
		_ = vm.Wait(ctx)
		return nil, err
	}
	return vm, nil
}

// preconnectAgent starts connecting to a restored guest's agent before the
// guest resumes: the handshake's first Hello waits in the channel, so the
// guest answers it as soon as it runs instead of at the next resend.
func (m *Manager) preconnectAgent(ctx context.Context, meta *Metadata) {
	if meta.SkipGuestAgent {
		return
	}
	c := m.agentFor(meta.ID, meta.VMMGen)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	go func() {
		defer cancel()
		_ = c.Connect(cctx)
	}()
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// refreshGuest runs the agent calls a resumed guest needs: the clock
// always; for a fork also its new network identity, hostname and entropy,
// after which its TAP comes up.
func (m *Manager) refreshGuest(ctx context.Context, meta *Metadata) error {
	fork := meta.Inherited
	if meta.SkipGuestAgent {
		if fork {
			return errdefs.Newf(errdefs.ErrFailedPrecondition, "invalid_request",
				"a fork resumed from memory needs the guest agent to take its new identity")
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c := m.agentFor(meta.ID, meta.VMMGen)
	if fork {
		return m.applyIdentity(ctx, c, meta, meta.InheritedMAC)
	}
	// The call itself waits for the agent (its session is being opened
	// since before the guest resumed): no separate ping, which on a guest
	// just resumed under emulation costs a cold round trip of its own.
	t0 := time.Now()
	res, err := c.Refresh(ctx, time.Now(), nil, "", nil)
	if err != nil {
		m.log.Warn("restored guest's agent does not answer; clock not stepped", "id", meta.ID, "err", err)
		return nil
	}
	m.log.Debug("guest clock stepped", "id", meta.ID, "took", time.Since(t0), "guest_micros", res.Micros)
	return nil
}

// applyIdentity gives a resumed fork its own identity inside the guest
// (address and MAC, hostname, entropy, clock, in one agent call), then
// brings its TAP up.
func (m *Manager) applyIdentity(ctx context.Context, c *agent.Client, meta *Metadata, sourceMAC string) error {
	var network *proto.NetworkRequest
	if n := meta.Network; n.Enabled && n.IP != "" && sourceMAC != "" {
		network = &proto.NetworkRequest{OldMAC: sourceMAC, MAC: n.MAC, IP: n.IP,
			PrefixLen: n.Prefix, Gateway: n.Gateway, FlushNeighbors: true}
	}
	seed := make([]byte, 64)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	t0 := time.Now()
	res, err := c.Refresh(ctx, time.Now(), network, meta.Name, seed)
	if err != nil {
		return fmt.Errorf("give the fork its identity: %w", err)
	}
	m.log.Debug("fork identity applied", "id", meta.ID, "took", time.Since(t0), "guest_micros", res.Micros)
	// The agent announces the new address by itself (gratuitous ARP)
	// shortly after its answer, once this TAP is up.
	if meta.Network.Enabled && meta.Network.TAP != "" {
		return m.net.SetTAPUp(ctx, meta.Network.TAP, true)
	}
	return nil
}
