package instances

import (
	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// State is an instance's lifecycle state, as the API names it.
type State string

// States.
const (
	StateCreated      State = "Created"
	StateInitializing State = "Initializing"
	StateRunning      State = "Running"
	StatePaused       State = "Paused"
	StateShutdown     State = "Shutdown"
	StateStopped      State = "Stopped"
	StateStandby      State = "Standby"
	StateUnknown      State = "Unknown"
)

// ValidState reports whether s names a state.
func ValidState(s string) bool {
	switch State(s) {
	case StateCreated, StateInitializing, StateRunning, StatePaused, StateShutdown,
		StateStopped, StateStandby, StateUnknown:
		return true
	}
	return false
}

// operation names a public lifecycle operation.
type operation string

const (
	opStart   operation = "start"
	opStop    operation = "stop"
	opStandby operation = "standby"
	opRestore operation = "restore"
)

// allowedFrom is the one table of which states each operation accepts.
// Delete accepts every state and is not listed; fork has its own rules
// (fork.go) because Running is allowed only on request.
var allowedFrom = map[operation][]State{
	opStart:   {StateStopped},
	opStop:    {StateRunning, StateInitializing},
	opStandby: {StateRunning},
	opRestore: {StateStandby},
}

// checkTransition returns an invalid_state conflict when op may not run
// from state s.
func checkTransition(op operation, s State) error {
	for _, ok := range allowedFrom[op] {
		if s == ok {
			return nil
		}
	}
	var want string
	for i, ok := range allowedFrom[op] {
		if i > 0 {
			want += " or "
		}
		want += string(ok)
	}
	return errdefs.Newf(errdefs.ErrConflict, "invalid_state",
		"invalid state transition: cannot %s from state %s, must be %s", op, s, want)
}
