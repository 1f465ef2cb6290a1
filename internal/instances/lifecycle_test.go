package instances

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/guest/events"
)

func TestStateDerivation(t *testing.T) {
	e := newEnv(t)
	id := e.create(t, "web").ID
	if got := e.waitState(t, id, StateInitializing); got.ExitCode != nil || got.ExitMessage != "" {
		t.Errorf("exit info while initializing: %v %q", got.ExitCode, got.ExitMessage)
	}
	// Events other than program_start do not make it Running.
	e.appendEvent(t, id, events.Event{Type: events.TypeAgentReady})
	if inst, _ := e.m.Get(context.Background(), id); inst.State != StateInitializing {
		t.Errorf("state %s after agent_ready, want Initializing", inst.State)
	}
	e.markStarted(t, id)
	e.waitState(t, id, StateRunning)

	e.appendEvent(t, id, exitEvent(3, "exited with code 3"))
	e.vmOf(t, id).exit()
	inst := e.waitState(t, id, StateStopped)
	waitFinalized(t, e, id)
	inst, _ = e.m.Get(context.Background(), id)
	if inst.ExitCode == nil || *inst.ExitCode != 3 || inst.ExitMessage != "exited with code 3" {
		t.Errorf("exit %v %q, want 3 from the exit event", inst.ExitCode, inst.ExitMessage)
	}
	if inst.StoppedAt == nil {
		t.Error("stopped_at not set")
	}
	if inst.Network.TAP != "" || !slices.Equal(e.net.releasedTAPs(), []string{"hmtap1"}) {
		t.Errorf("network not released: meta %+v, released %v", inst.Network, e.net.releasedTAPs())
	}
	for _, f := range []string{e.paths.InstanceMemory(id), e.paths.InstancePIDFile(id, 0)} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after exit: %v", f, err)
		}
	}
}

// waitFinalized waits until the VM's exit has been recorded in metadata
// (the watcher does it asynchronously after the process ends).
func waitFinalized(t *testing.T, e *env, id string) {
	t.Helper()
	for i := 0; ; i++ {
		meta, err := loadMetadata(e.paths.InstanceMetadata(id))
		if err == nil && meta.StoppedAt != nil {
			return
		}
		if i > 1000 {
			t.Fatalf("exit of %s never recorded", id)
		}
		e.waitState(t, id, StateStopped)
	}
}

func TestExitInfoWithoutExitEvent(t *testing.T) {
	tests := []struct {
		name     string
		end      func(t *testing.T, e *env, id string)
		wantCode *int
		wantMsg  string
	}{
		{
			name:    "VM ends by itself",
			end:     func(t *testing.T, e *env, id string) { e.vmOf(t, id).exit() },
			wantMsg: "the VM ended without reporting the program's exit status",
		},
		{
			name: "stop kills a VM that refuses the shutdown request",
			end: func(t *testing.T, e *env, id string) {
				e.vmOf(t, id).set(func(v *fakeVM) { v.shutdownErr = errors.New("QMP gone") })
				if _, err := e.m.Stop(context.Background(), id); err != nil {
					t.Fatal(err)
				}
			},
			wantCode: ptrInt(137),
			wantMsg:  "killed by signal 9 (SIGKILL): the VM was stopped forcibly",
		},
		{
			name: "stop kills a VM that ignores the shutdown request",
			end: func(t *testing.T, e *env, id string) {
				e.vmOf(t, id).set(func(v *fakeVM) { v.ignoreShutdown = true })
				if _, err := e.m.Stop(context.Background(), id); err != nil {
					t.Fatal(err)
				}
				if e.vmOf(t, id).killCount() != 1 {
					t.Error("VM not killed")
				}
			},
			wantCode: ptrInt(137),
			wantMsg:  "killed by signal 9 (SIGKILL): the VM was stopped forcibly",
		},
		{
			name: "graceful stop, guest powers off without an exit event",
			end: func(t *testing.T, e *env, id string) {
				if _, err := e.m.Stop(context.Background(), id); err != nil {
					t.Fatal(err)
				}
				if e.vmOf(t, id).killCount() != 0 {
					t.Fatal("VM killed although it obeyed the shutdown request")
				}
			},
			wantMsg: "the VM ended without reporting the program's exit status",
		},
		{
			name: "graceful stop with the guest's exit event",
			end: func(t *testing.T, e *env, id string) {
				e.vmOf(t, id).set(func(v *fakeVM) {
					v.beforeExit = func() { e.appendEvent(t, id, exitEvent(143, "killed by signal 15 (SIGTERM)")) }
				})
				if _, err := e.m.Stop(context.Background(), id); err != nil {
					t.Fatal(err)
				}
			},
			wantCode: ptrInt(143),
			wantMsg:  "killed by signal 15 (SIGTERM)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			id := e.create(t, "web").ID
			tt.end(t, e, id)
			waitFinalized(t, e, id)
			inst := e.waitState(t, id, StateStopped)
			if !equalIntPtr(inst.ExitCode, tt.wantCode) || inst.ExitMessage != tt.wantMsg {
				t.Errorf("exit %v %q, want %v %q", fmtIntPtr(inst.ExitCode), inst.ExitMessage, fmtIntPtr(tt.wantCode), tt.wantMsg)
			}
		})
	}
}

func ptrInt(n int) *int { return &n }

func equalIntPtr(a, b *int) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

func fmtIntPtr(p *int) any {
	if p == nil {
		return "nil"
	}
	return *p
}

func TestStartStopTransitions(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.create(t, "web").ID

	_, err := e.m.Start(ctx, id, StartRequest{})
	wantCode(t, err, errdefs.ErrConflict, "invalid_state")
	if want := "invalid state transition: cannot start from state Initializing, must be Stopped"; errdefs.Message(err) != want {
		t.Errorf("message %q, want %q", errdefs.Message(err), want)
	}

	e.markStarted(t, id)
	e.waitState(t, id, StateRunning)
	_, err = e.m.Start(ctx, "web", StartRequest{})
	wantCode(t, err, errdefs.ErrConflict, "invalid_state")
	if want := "invalid state transition: cannot start from state Running, must be Stopped"; errdefs.Message(err) != want {
		t.Errorf("message %q, want %q", errdefs.Message(err), want)
	}

	inst, err := e.m.Stop(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if inst.State != StateStopped {
		t.Errorf("stop returned state %s", inst.State)
	}
	_, err = e.m.Stop(ctx, id)
	wantCode(t, err, errdefs.ErrConflict, "invalid_state")
	if want := "invalid state transition: cannot stop from state Stopped, must be Running or Initializing"; errdefs.Message(err) != want {
		t.Errorf("message %q, want %q", errdefs.Message(err), want)
	}

	// Start again: a new boot with a fresh network identity and cleared exit.
	inst, err = e.m.Start(ctx, id, StartRequest{Cmd: []string{"sleep", "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if inst.State != StateInitializing || inst.Boot != 2 || inst.ExitCode != nil || inst.ExitMessage != "" ||
		inst.StoppedAt != nil || inst.Network.TAP != "hmtap2" || !slices.Equal(inst.Cmd, []string{"sleep", "1"}) {
		t.Errorf("after restart: %+v", inst)
	}
	// The new boot's events.log starts empty: the old program_start is gone.
	if e.m.bootEvents(id).ProgramStarted {
		t.Error("program_start of the previous boot still counts")
	}
}

// Stop from Initializing is allowed too.
func TestStopFromInitializing(t *testing.T) {
	e := newEnv(t)
	id := e.create(t, "web").ID
	if _, err := e.m.Stop(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, id, StateStopped)
}

func TestStartFailureKeepsStopped(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.create(t, "web").ID
	if _, err := e.m.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	e.hv.setStartErr(boom)
	if _, err := e.m.Start(ctx, id, StartRequest{}); !errors.Is(err, boom) {
		t.Fatalf("start: %v, want boom", err)
	}
	inst := e.waitState(t, id, StateStopped)
	if inst.Network.TAP != "" || e.net.live() != 0 {
		t.Errorf("network kept after a failed start: %+v, %d live", inst.Network, e.net.live())
	}
	e.hv.setStartErr(nil)
	if _, err := e.m.Start(ctx, id, StartRequest{}); err != nil {
		t.Fatalf("start after a failed start: %v", err)
	}
}

func TestConcurrentStart(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.create(t, "web").ID
	if _, err := e.m.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	const n = 4
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.m.Start(ctx, id, StartRequest{})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errdefs.Code(err) != "invalid_state" || !errors.Is(err, errdefs.ErrConflict):
			t.Errorf("losing start: %v, want invalid_state", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d starts succeeded, want exactly 1", ok)
	}
	if live := e.net.live(); live != 1 {
		t.Errorf("%d network allocations live, want 1", live)
	}
}

func TestDeleteFromEveryState(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, e *env, id string)
		want    State
	}{
		{"Initializing", func(t *testing.T, e *env, id string) {}, StateInitializing},
		{"Running", func(t *testing.T, e *env, id string) {
			e.markStarted(t, id)
		}, StateRunning},
		{"Stopped", func(t *testing.T, e *env, id string) {
			if _, err := e.m.Stop(context.Background(), id); err != nil {
				t.Fatal(err)
			}
		}, StateStopped},
		{"Unknown", func(t *testing.T, e *env, id string) {
			if err := os.WriteFile(e.paths.InstanceMetadata(id), []byte("{garbage"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, StateUnknown},
	}
	for _, tt := range tests {
		for _, graceful := range []bool{true, false} {
			name := tt.name + "/graceful"
			if !graceful {
				name = tt.name + "/forced"
			}
			t.Run(name, func(t *testing.T) {
				e := newEnv(t)
				id := e.create(t, "web").ID
				vm := e.vmOf(t, id)
				tt.prepare(t, e, id)
				e.waitState(t, id, tt.want)
				if err := e.m.Delete(context.Background(), id, graceful); err != nil {
					t.Fatal(err)
				}
				if _, err := os.Stat(e.paths.InstanceDir(id)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("instance dir left: %v", err)
				}
				if !vm.Exited() {
					t.Error("VM still runs")
				}
				if tt.want != StateUnknown && (e.net.live() != 0 || !slices.Equal(e.net.releasedTAPs(), []string{"hmtap1"})) {
					t.Errorf("network: %d live, released %v", e.net.live(), e.net.releasedTAPs())
				}
				_, err := e.m.Get(context.Background(), id)
				wantCode(t, err, errdefs.ErrNotFound, "not_found")
				// The name is free again.
				e.create(t, "web")
			})
		}
	}
}

func TestDeleteUnknownRef(t *testing.T) {
	e := newEnv(t)
	err := e.m.Delete(context.Background(), "nope", true)
	wantCode(t, err, errdefs.ErrNotFound, "not_found")
}

func TestLogPath(t *testing.T) {
	e := newEnv(t)
	id := e.create(t, "web").ID
	for src, want := range map[string]string{
		"": e.paths.InstanceAppLog(id), "app": e.paths.InstanceAppLog(id),
		"vmm": e.paths.InstanceVMMLog(id), "hypeman": e.paths.InstanceHypemanLog(id),
	} {
		got, err := e.m.LogPath(context.Background(), "web", src)
		if err != nil || got != want {
			t.Errorf("LogPath(%q) = %q, %v; want %q", src, got, err, want)
		}
	}
	_, err := e.m.LogPath(context.Background(), "web", "kernel")
	wantCode(t, err, errdefs.ErrInvalidArgument, "invalid_request")
	// The operations log has the create.
	b, _ := os.ReadFile(e.paths.InstanceHypemanLog(id))
	if !strings.Contains(string(b), " create ok ") {
		t.Errorf("hypeman.log lacks the create: %q", b)
	}
}
