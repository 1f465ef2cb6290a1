package instances

import (
	"context"
	"errors"
	"time"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/guest/events"
)

func parseEvents(path string) (events.Summary, error) { return events.ParseFile(path) }

// WaitResult is the outcome of WaitForState.
type WaitResult struct {
	State      State
	StateError string
	TimedOut   bool
}

// terminalForWait are states a wait does not wait past: once there, the
// target cannot be reached without another request.
var terminalForWait = map[State]bool{
	StateUnknown: true, StateStopped: true, StateStandby: true, StateShutdown: true, StatePaused: true,
}

// WaitForState blocks until the instance reaches target, a state it cannot
// leave by itself, is deleted (not_found), or timeout passes (TimedOut).
func (m *Manager) WaitForState(ctx context.Context, ref string, target State, timeout time.Duration) (WaitResult, error) {
	id, err := m.Resolve(ctx, ref)
	if err != nil {
		return WaitResult{}, err
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		changed := m.changes()
		inst, err := m.get(id)
		if errors.Is(err, errdefs.ErrNotFound) {
			return WaitResult{}, errdefs.Newf(errdefs.ErrNotFound, "not_found", "instance was deleted while waiting")
		}
		if err != nil {
			return WaitResult{}, err
		}
		if inst.State == target || terminalForWait[inst.State] {
			// An operation in progress (a delete finalizes the VM as
			// Stopped, then removes the instance) must finish first:
			// the waiter sees its outcome, not a step in between.
			unlock := m.lock(id)
			inst, err = m.get(id)
			unlock()
			if errors.Is(err, errdefs.ErrNotFound) {
				return WaitResult{}, errdefs.Newf(errdefs.ErrNotFound, "not_found", "instance was deleted while waiting")
			}
			if err != nil {
				return WaitResult{}, err
			}
			if inst.State != target && !terminalForWait[inst.State] {
				continue
			}
			return WaitResult{State: inst.State, StateError: inst.StateError}, nil
		}
		select {
		case <-changed:
		case <-time.After(2 * time.Second): // fallback if a change was not signalled
		case <-deadline.C:
			return WaitResult{State: inst.State, StateError: inst.StateError, TimedOut: true}, nil
		case <-ctx.Done():
			return WaitResult{}, ctx.Err()
		}
	}
}
