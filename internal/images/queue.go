package images

import (
	"context"
	"sync"
)

// queue orders image jobs (keyed by digest hex) for a fixed number of workers.
// A digest is queued at most once: enqueueing one that is waiting or running
// does nothing. Safe for concurrent use.
type queue struct {
	mu      sync.Mutex
	cond    *sync.Cond
	closed  bool               // guarded by mu
	waiting []string           // guarded by mu; FIFO of digest hexes
	running map[string]*job    // guarded by mu
	ctx     context.Context    // parent of every job's context
	stop    context.CancelFunc // cancels ctx on close
}

// job is a running digest: cancel stops it, done closes when it returns.
type job struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func newQueue() *queue {
	ctx, stop := context.WithCancel(context.Background())
	q := &queue{running: map[string]*job{}, ctx: ctx, stop: stop}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// enqueue adds hex at the end unless it is already waiting or running.
func (q *queue) enqueue(hex string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.running[hex] != nil || q.indexOf(hex) >= 0 {
		return
	}
	q.waiting = append(q.waiting, hex)
	q.cond.Signal()
}

func (q *queue) indexOf(hex string) int {
	for i, h := range q.waiting {
		if h == hex {
			return i
		}
	}
	return -1
}

// position is hex's 1-based place among waiting jobs, 0 when not waiting.
func (q *queue) position(hex string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.indexOf(hex) + 1
}

// next blocks until a job is available and marks it running. ok is false once
// the queue is closed.
func (q *queue) next() (hex string, ctx context.Context, j *job, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.waiting) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return "", nil, nil, false
	}
	hex, q.waiting = q.waiting[0], q.waiting[1:]
	ctx, cancel := context.WithCancel(q.ctx)
	j = &job{cancel: cancel, done: make(chan struct{})}
	q.running[hex] = j
	return hex, ctx, j, true
}

// finish marks the running job hex as done.
func (q *queue) finish(hex string, j *job) {
	q.mu.Lock()
	defer q.mu.Unlock()
	j.cancel()
	close(j.done)
	if q.running[hex] == j {
		delete(q.running, hex)
	}
}

// cancel drops hex from the wait list, or cancels it if running, and
// returns a channel closed once no job for hex is running.
func (q *queue) cancel(hex string) <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if i := q.indexOf(hex); i >= 0 {
		q.waiting = append(q.waiting[:i:i], q.waiting[i+1:]...)
	}
	if j := q.running[hex]; j != nil {
		j.cancel()
		return j.done
	}
	done := make(chan struct{})
	close(done)
	return done
}

// close stops handing out jobs and cancels the running ones. Workers see
// next return ok=false.
func (q *queue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.stop()
	q.cond.Broadcast()
}

// closing reports whether close was called.
func (q *queue) closing() bool { return q.ctx.Err() != nil }
