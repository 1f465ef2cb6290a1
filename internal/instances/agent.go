package instances

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/hypeman-vm/hypeman/internal/agent"
	"github.com/hypeman-vm/hypeman/internal/errdefs"
)

// agentFor returns the agent client of instance id's VMM generation gen,
// creating it on first use. Clients live as long as their VMM:
// finalizeStopped closes them, and a new generation replaces them.
func (m *Manager) agentFor(id string, gen int) *agent.Client {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ac, ok := m.agents[id]; ok {
		if ac.gen == gen {
			return ac.c
		}
		ac.c.Close()
	}
	c := agent.New(agent.UnixDialer(m.paths.InstanceAgentSocket(id, gen)), m.log.With("instance", id),
		agent.WithBulk(agent.UnixDialer(m.paths.InstanceBulkSocket(id, gen))))
	m.agents[id] = agentClient{c: c, gen: gen}
	return c
}

type agentClient struct {
	c   *agent.Client
	gen int
}

// dropAgent closes and forgets the agent client of id.
func (m *Manager) dropAgent(id string) {
	m.mu.Lock()
	ac, ok := m.agents[id]
	delete(m.agents, id)
	m.mu.Unlock()
	if ok {
		ac.c.Close()
	}
}

// Agent returns the guest agent of a Running instance, for exec, cp and
// stat. Other states get invalid_state; an instance created with
// skip_guest_agent gets agent_disabled.
func (m *Manager) Agent(ctx context.Context, ref string) (*agent.Client, Instance, error) {
	inst, err := m.Get(ctx, ref)
	if err != nil {
		return nil, Instance{}, err
	}
	if inst.SkipGuestAgent {
		return nil, inst, errdefs.Newf(errdefs.ErrConflict, "agent_disabled",
			"instance %s was created with skip_guest_agent: exec, cp and stat are unavailable", inst.Name)
	}
	if inst.State != StateRunning {
		return nil, inst, errdefs.Newf(errdefs.ErrConflict, "invalid_state",
			"instance must be running (current state: %s)", inst.State)
	}
	return m.agentFor(inst.ID, inst.VMMGen), inst, nil
}

// Stats is an instance's resource use as the host sees it.
type Stats struct {
	CPUSeconds  float64
	RSSBytes    int64
	VMSBytes    int64
	NetRxBytes  int64 // bytes the guest received
	NetTxBytes  int64 // bytes the guest sent
	VCPUs       int
	MemoryBytes int64
}

// TAPCounter reads a TAP's byte counters as the host sees them: rx is
// what the guest sent, tx what it was sent.
type TAPCounter func(tap string) (rx, tx uint64, err error)

// Stats reports CPU time and memory of the VM process and the traffic of
// its TAP. A stopped instance reports zeros for the live figures.
func (m *Manager) Stats(ctx context.Context, ref string, taps TAPCounter) (Instance, Stats, error) {
	inst, err := m.Get(ctx, ref)
	if err != nil {
		return Instance{}, Stats{}, err
	}
	st := Stats{VCPUs: inst.VCPUs, MemoryBytes: inst.MemoryBytes + inst.HotplugBytes}
	m.mu.Lock()
	rv := m.vms[inst.ID]
	m.mu.Unlock()
	if rv != nil && !rv.vm.Exited() {
		if err := procStats(rv.vm.PID(), &st); err != nil {
			return inst, st, fmt.Errorf("stats of %s: %w", inst.ID, err)
		}
	}
	if tap := inst.Network.TAP; tap != "" && taps != nil {
		if rx, tx, err := taps(tap); err == nil {
			st.NetTxBytes, st.NetRxBytes = int64(rx), int64(tx)
		}
	}
	return inst, st, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times on Linux.
const clockTicks = 100

// procStats fills CPU time and memory of pid from /proc.
func procStats(pid int, st *Stats) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return err
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 22 {
		return fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	vsize, _ := strconv.ParseInt(f[20], 10, 64)
	rssPages, _ := strconv.ParseInt(f[21], 10, 64)
	st.CPUSeconds = float64(utime+stime) / clockTicks
	st.VMSBytes = vsize
	st.RSSBytes = rssPages * int64(os.Getpagesize())
	return nil
}
