package instances

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

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
func runSteps(ctx context.Context, log *slog.Logger, op string, steps []step) error {
	for i, s := range steps {
		start := time.Now()
		err := s.do(ctx)
		log.Debug("step", "op", op, "step", s.name, "took", time.Since(start), "ok", err == nil)
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
