package instances

import (
	"context"
	"sync"
	"testing"

	"github.com/hypeman-vm/hypeman/internal/guest/events"
)

// Readers of an instance's state run while the watcher records that the
// program started; the race detector must find nothing.
func TestViewWhileProgramStarts(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 20; i++ {
		id := e.create(t, "web").ID
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
						_, _ = e.m.Get(context.Background(), id)
					}
				}
			}()
		}
		e.appendEvent(t, id, events.Event{Type: events.TypeProgramStart})
		e.waitState(t, id, StateRunning)
		close(stop)
		wg.Wait()
		if err := e.m.Delete(context.Background(), id, false); err != nil {
			t.Fatal(err)
		}
	}
}
