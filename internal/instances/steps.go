package instances

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"
)

// crash kills the daemon at once, as SIGKILL would: the test hook behind
// Config.CrashAfter, used to check that every step can be interrupted.
func crash(op, step string) {
	fmt.Fprintf(os.Stderr, "hypeman: test crash after %s/%s\n", op, step)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

// step is one named action of an operation, with an optional undo that
// reverses it if a later step fails.
type step struct {
	name string
	do   func(ctx context.Context) error
	undo func(ctx context.Context)
}

// runSteps runs steps in order. When one fails, the undos of the steps that
// succeeded run in reverse order, and the error names the operation and the
// failed step ("create: start-vm: ...") while keeping its class.
func (m *Manager) runSteps(ctx context.Context, op string, steps []step) error {
	log := m.log
	for i, s := range steps {
		start := time.Now()
		err := s.do(ctx)
		log.Debug("step", "op", op, "step", s.name, "took", time.Since(start), "ok", err == nil)
		if err == nil && m.cfg.CrashAfter == op+"/"+s.name {
			crash(op, s.name)
		}
		if err != nil {
			log.Warn("step failed, rolling back", "op", op, "step", s.name, "err", err)
			undo := context.WithoutCancel(ctx)
			for j := i - 1; j >= 0; j-- {
				if steps[j].undo != nil {
					steps[j].undo(undo)
				}
			}
			return fmt.Errorf("%s: %s: %w", op, s.name, err)
		}
	}
	return nil
}
