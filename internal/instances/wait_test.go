package instances

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/guest/events"
)

func TestWaitForState(t *testing.T) {
	tests := []struct {
		name    string
		target  State
		timeout time.Duration
		// meanwhile runs in a goroutine while the wait blocks.
		meanwhile func(t *testing.T, e *env, id string)
		want      WaitResult
		wantCode  string
	}{
		{
			name: "already there", target: StateInitializing, timeout: time.Second,
			want: WaitResult{State: StateInitializing},
		},
		{
			name: "reaches the target", target: StateRunning, timeout: 5 * time.Second,
			meanwhile: func(t *testing.T, e *env, id string) {
				e.appendEvent(t, id, events.Event{Type: events.TypeProgramStart})
			},
			want: WaitResult{State: StateRunning},
		},
		{
			name: "stops at a terminal state", target: StateRunning, timeout: 5 * time.Second,
			meanwhile: func(t *testing.T, e *env, id string) { e.vmOf(t, id).exit() },
			want:      WaitResult{State: StateStopped},
		},
		{
			name: "times out", target: StateRunning, timeout: 100 * time.Millisecond,
			want: WaitResult{State: StateInitializing, TimedOut: true},
		},
		{
			name: "deleted while waiting", target: StateRunning, timeout: 5 * time.Second,
			meanwhile: func(t *testing.T, e *env, id string) {
				if err := e.m.Delete(context.Background(), id, false); err != nil {
					t.Error(err)
				}
			},
			wantCode: "not_found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			id := e.create(t, "web").ID
			if tt.meanwhile != nil {
				done := make(chan struct{})
				t.Cleanup(func() { <-done })
				go func() {
					defer close(done)
					time.Sleep(50 * time.Millisecond)
					tt.meanwhile(t, e, id)
				}()
			}
			start := time.Now()
			got, err := e.m.WaitForState(context.Background(), id, tt.target, tt.timeout)
			if elapsed := time.Since(start); elapsed > tt.timeout+time.Second {
				t.Errorf("wait took %v (timeout %v)", elapsed, tt.timeout)
			}
			if tt.wantCode != "" {
				wantCode(t, err, errdefs.ErrNotFound, tt.wantCode)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestWaitForStateUnknownRef(t *testing.T) {
	e := newEnv(t)
	_, err := e.m.WaitForState(context.Background(), "nope", StateRunning, time.Second)
	wantCode(t, err, errdefs.ErrNotFound, "not_found")
}

func TestWaitForStateContextCanceled(t *testing.T) {
	e := newEnv(t)
	id := e.create(t, "web").ID
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := e.m.WaitForState(ctx, id, StateRunning, time.Minute)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the context's error", err)
	}
}
