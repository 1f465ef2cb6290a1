package instances

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/hypeman-vm/hypeman/internal/guest/events"
)

// restart closes the env's manager (its VMs keep running in the fake
// hypervisor) and returns a new one, as a restarted daemon, after Recover.
func (e *env) restart(t *testing.T) map[string]bool {
	t.Helper()
	e.m.Close()
	e.m = e.newManager(t)
	keep, err := e.m.Recover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return keep
}

func TestRecoverAdoptsRunningVM(t *testing.T) {
	e := newEnv(t)
	runID := e.create(t, "run").ID
	e.markStarted(t, runID)
	e.waitState(t, runID, StateRunning)
	initID := e.create(t, "init").ID

	keep := e.restart(t)

	if want := map[string]bool{"hmtap1": true, "hmtap2": true}; !mapsEqual(keep, want) {
		t.Errorf("keepTAPs %v, want %v", keep, want)
	}
	e.net.mu.Lock()
	reservedRun, reservedInit := e.net.reserved[runID], e.net.reserved[initID]
	e.net.mu.Unlock()
	if reservedRun.TAP != "hmtap1" || reservedRun.IP.String() != "10.100.0.2" || reservedRun.MAC != "02:00:00:00:00:01" ||
		reservedRun.Gateway.String() != "10.100.0.1" || reservedRun.Prefix != 24 {
		t.Errorf("Reserve for the running VM: %+v", reservedRun)
	}
	if reservedInit.TAP != "hmtap2" {
		t.Errorf("Reserve for the initializing VM: %+v", reservedInit)
	}
	e.waitState(t, runID, StateRunning)
	e.waitState(t, initID, StateInitializing)

	// Adopted VMs are watched: program start and exit are noticed.
	e.markStarted(t, initID)
	e.waitState(t, initID, StateRunning)
	e.appendEvent(t, runID, exitEvent(0, "exited with code 0"))
	e.vmOf(t, runID).exit()
	waitFinalized(t, e, runID)
	inst := e.waitState(t, runID, StateStopped)
	if inst.ExitCode == nil || *inst.ExitCode != 0 || !slices.Contains(e.net.releasedTAPs(), "hmtap1") {
		t.Errorf("adopted VM's exit: %+v, released %v", inst, e.net.releasedTAPs())
	}
	// And they can be stopped.
	if _, err := e.m.Stop(context.Background(), initID); err != nil {
		t.Fatal(err)
	}
	if !e.vmOf(t, initID).Exited() {
		t.Error("stop of an adopted VM left it running")
	}
}

func TestRecoverFinalizesVMThatEnded(t *testing.T) {
	tests := []struct {
		name     string
		event    *events.Event
		wantCode *int
		wantMsg  string
	}{
		{"with exit event", ptrEvent(exitEvent(7, "exited with code 7")), ptrInt(7), "exited with code 7"},
		{"without exit event", nil, nil, "the VM ended without reporting the program's exit status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			id := e.create(t, "web").ID
			e.m.Close() // the daemon dies; the VM ends while nobody watches
			if tt.event != nil {
				e.appendEvent(t, id, *tt.event)
			}
			e.vmOf(t, id).exit()

			keep := e.restart(t)
			if len(keep) != 0 {
				t.Errorf("keepTAPs %v, want none", keep)
			}
			inst := e.waitState(t, id, StateStopped)
			if inst.StoppedAt == nil || !equalIntPtr(inst.ExitCode, tt.wantCode) || inst.ExitMessage != tt.wantMsg {
				t.Errorf("got stopped_at %v exit %v %q, want %v %q", inst.StoppedAt, fmtIntPtr(inst.ExitCode),
					inst.ExitMessage, fmtIntPtr(tt.wantCode), tt.wantMsg)
			}
			if !slices.Equal(e.net.releasedTAPs(), []string{"hmtap1"}) || inst.Network.TAP != "" {
				t.Errorf("network: released %v, meta %+v", e.net.releasedTAPs(), inst.Network)
			}
			b, _ := os.ReadFile(e.paths.InstanceHypemanLog(id))
			if !strings.Contains(string(b), "(found at daemon start)") {
				t.Errorf("hypeman.log lacks the exit found at start: %q", b)
			}
		})
	}
}

func ptrEvent(e events.Event) *events.Event { return &e }

func TestRecoverRollsBackInterruptedCreate(t *testing.T) {
	tests := []struct {
		name      string
		vmRunning bool
	}{
		{"VM running", true},
		{"VM never started", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			id := "half0000000000000000000a"
			e.writeMeta(t, &Metadata{ID: id, Name: "half", Creating: true, Network: NetworkMeta{
				Enabled: true, IP: "10.100.0.9", Prefix: 24, Gateway: "10.100.0.1", MAC: "02:00:00:00:00:09", TAP: "hmtap9"}})
			var vm *fakeVM
			if tt.vmRunning {
				vm = e.hv.addVM(e.paths.InstancePIDFile(id, 0))
			}
			keep := e.restart(t)
			if len(keep) != 0 {
				t.Errorf("keepTAPs %v, want none", keep)
			}
			if _, err := os.Stat(e.paths.InstanceDir(id)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("instance dir left: %v", err)
			}
			if vm != nil && (!vm.Exited() || vm.killCount() != 1) {
				t.Errorf("VM of the interrupted create not killed (exited %v, kills %d)", vm.Exited(), vm.killCount())
			}
			if !slices.Equal(e.net.releasedTAPs(), []string{"hmtap9"}) {
				t.Errorf("released %v, want [hmtap9]", e.net.releasedTAPs())
			}
			// The name is free.
			e.create(t, "half")
		})
	}
}

func TestRecoverRemovesDirWithoutMetadata(t *testing.T) {
	e := newEnv(t)
	id := "nometa00000000000000000a"
	if err := os.MkdirAll(e.paths.InstanceLogsDir(id), 0o755); err != nil {
		t.Fatal(err)
	}
	e.restart(t)
	if _, err := os.Stat(e.paths.InstanceDir(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir without metadata left: %v", err)
	}
}

func TestRecoverKeepsStoppedAndUnknown(t *testing.T) {
	e := newEnv(t)
	stopped := e.create(t, "stopped").ID
	if _, err := e.m.Stop(context.Background(), stopped); err != nil {
		t.Fatal(err)
	}
	before, _ := e.m.Get(context.Background(), stopped)
	bad := "bad00000000000000000000a"
	if err := os.MkdirAll(e.paths.InstanceDir(bad), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.paths.InstanceMetadata(bad), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	released := len(e.net.releasedTAPs())
	e.restart(t)
	after := e.waitState(t, stopped, StateStopped)
	if !after.StoppedAt.Equal(*before.StoppedAt) || !equalIntPtr(after.ExitCode, before.ExitCode) || after.ExitMessage != before.ExitMessage {
		t.Errorf("a stopped instance changed at recovery: %+v -> %+v", before, after)
	}
	if n := len(e.net.releasedTAPs()); n != released {
		t.Errorf("recovery released %d more allocations", n-released)
	}
	e.waitState(t, bad, StateUnknown)
}

func mapsEqual(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
