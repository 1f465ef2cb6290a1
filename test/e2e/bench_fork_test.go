package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypeman-vm/hypeman/internal/agent"
	"github.com/hypeman-vm/hypeman/internal/guest/vmconfig"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
	"github.com/hypeman-vm/hypeman/internal/hypervisor/qemu"
	"github.com/hypeman-vm/hypeman/internal/storage"
)

// BenchmarkFork measures standby, restore and fork through the API on
// guests of several RAM, working-set and disk sizes, side by side with a
// plain QEMU save and restore of the same guests (RAM in anonymous memory,
// written whole into the state file), plus 25 concurrent forks of one
// source and the host memory of many idle forks. One run, one table.
//
// Run (as root, after `make build`):
//
//	cd test/e2e && go test -run '^$' -bench BenchmarkFork -benchtime 1x -count 1 -timeout 60m .
//
// HYPEMAN_FORKBENCH=smoke runs a small variant (one size, few forks; with
// HYPEMAN_FORKBENCH_BIG=1 the 8 GiB guest with 1 GiB written);
// HYPEMAN_FORKBENCH=idle only the idle forks (and 2 concurrent ones). The
// daemon's data dir is on XFS with reflinks (freezing by cloning) unless
// HYPEMAN_E2E_FREEZE=move (see xfs_test.go).
//
// Per configuration (RAM, working set, overlay size), source A is created
// (1 vCPU), 512 MiB of random data is written to a file under /var (the
// overlay disk) and synced, then the working set is written to /dev/shm
// (a tmpfs: guest RAM). Then, each timed through the API (request sent to
// answer received), with the daemon's per-step durations taken from its
// debug log lines written during the request:
//
//   - standby twice and restore once, while RAM is still the instance's own
//     shared file (the state file holds device state only);
//   - forks from Standby to Running (POST fork, target_state Running), each
//     followed by one exec of `true`, timed apart; "resume" is the fork's
//     restore-vm step (QEMU start, state load, cont); each fork is deleted
//     before the next;
//   - restore again (now from the frozen RAM, mapped privately), a
//     from_running fork and a standby of that source "after a fork".
//
// Source B of the same configuration (working set only) is forked once
// from Running: the clean case of a from_running fork (its RAM still its
// own file), and then a second time; then twice more, each right after it
// wrote its working set again (the pause target is the p50 of the three
// forks that follow a fresh working set).
//
// Baseline, per (RAM, working set): a bare VM at the hypervisor layer
// (same kernel, initramfs, image, 1 vCPU, no NIC) whose RAM is anonymous
// (no memory file), the same working set written through the agent, then
// stop + save (QMP migrate to a file, with fsync, as the daemon's save)
// and a restore into a new QEMU (-incoming, load, cont: QEMU start to
// running).
//
// No timing is asserted (the machine is noisy): targets are printed with
// PASS or MISS. An operation that fails fails the benchmark.
func BenchmarkFork(b *testing.B) {
	plan := forkBenchPlan()
	d, img := benchDaemon(b)
	fb := &forkBench{b: b, d: d, img: img}
	var res forkResults
	for b.Loop() {
		res = fb.run(plan)
	}
	reportFork(b, plan, res)
}

// Sizes.
const (
	mib = int64(1) << 20
	gib = int64(1) << 30
)

// forkCfg is one guest configuration.
type forkCfg struct {
	ram, ws, disk int64
}

func (c forkCfg) String() string {
	return fmt.Sprintf("%s/%s/%s", sizeArg(c.ram), sizeArg(c.ws), sizeArg(c.disk))
}

// sizeArg renders n as the API's size strings ("512MB", "2GB").
func sizeArg(n int64) string {
	if n%gib == 0 {
		return fmt.Sprintf("%dGB", n/gib)
	}
	return fmt.Sprintf("%dMB", n/mib)
}

// forkPlan is what one run does.
type forkPlan struct {
	name       string
	configs    []forkCfg
	perConfig  int     // forks from Standby per configuration
	concurrent int     // concurrent forks of one source
	concRAM    int64   // RAM of that source
	idle       int     // idle forks to create
	idleBatch  int     // idle forks created concurrently
	idleRAM    int64   // RAM of their source
	diskWrite  int64   // written to the overlay disk of sources A
	idleBudget float64 // minutes the idle phase may take
}

func forkBenchPlan() forkPlan {
	if os.Getenv("HYPEMAN_FORKBENCH") == "idle" {
		return forkPlan{name: "idle", concurrent: 2, concRAM: gib, idle: 100, idleBatch: 10, idleRAM: gib, idleBudget: 10}
	}
	if os.Getenv("HYPEMAN_FORKBENCH") == "smoke" {
		cfg := forkCfg{512 * mib, 256 * mib, gib}
		if os.Getenv("HYPEMAN_FORKBENCH_BIG") != "" {
			cfg = forkCfg{8 * gib, gib, 20 * gib} // the largest of the default plan
		}
		return forkPlan{name: "smoke", configs: []forkCfg{cfg},
			perConfig: 2, concurrent: 3, concRAM: 2 * gib, idle: 4, idleBatch: 2, idleRAM: gib,
			diskWrite: 64 * mib, idleBudget: 5}
	}
	// The smallest set in which every RAM size, working set and overlay
	// size appears: on a busy 2-core machine each configuration takes 8-12
	// minutes (filling 1.5 GiB in an emulated guest); HYPEMAN_FORKBENCH=all
	// runs the full cross product (10 feasible configurations: a 512 MiB
	// guest cannot hold a 1 GiB working set).
	cs := []forkCfg{{512 * mib, 256 * mib, gib}, {2 * gib, gib, 20 * gib}, {8 * gib, gib, 20 * gib}}
	if os.Getenv("HYPEMAN_FORKBENCH") == "all" {
		cs = nil
		for _, ram := range []int64{512 * mib, 2 * gib, 8 * gib} {
			for _, ws := range []int64{256 * mib, gib} {
				for _, disk := range []int64{gib, 20 * gib} {
					if ws < ram {
						cs = append(cs, forkCfg{ram, ws, disk})
					}
				}
			}
		}
	}
	return forkPlan{name: "full", configs: cs, perConfig: 7, concurrent: 25, concRAM: 2 * gib,
		idle: 100, idleBatch: 10, idleRAM: gib, diskWrite: 512 * mib, idleBudget: 10}
}

// forkBench runs the benchmark against one daemon.
type forkBench struct {
	b   *testing.B
	d   *daemon
	img string
	n   int
}

// forkResults is everything one run measured.
type forkResults struct {
	configs   []cfgResult
	baselines map[[2]int64]baseResult // by (RAM, working set)
	conc      concResult
	idle      idleResult
	load      []float64 // host load average at each configuration's start
}

func (fb *forkBench) run(plan forkPlan) forkResults {
	res := forkResults{baselines: map[[2]int64]baseResult{}}
	// Many forks first: they need no large fills, and a run cut short by a
	// busy machine still has them.
	fmt.Printf("BenchmarkFork: %d concurrent forks (load %.1f)\n", plan.concurrent, loadAvg())
	res.conc = fb.concurrentForks(plan)
	var w strings.Builder
	reportConc(&w, res.conc)
	fmt.Print(w.String())
	fmt.Printf("BenchmarkFork: %d idle forks (load %.1f)\n", plan.idle, loadAvg())
	res.idle = fb.idleForks(plan)
	w.Reset()
	reportIdle(&w, res.idle)
	fmt.Print(w.String())
	for i, c := range plan.configs {
		// The forks above leave work behind (100 VMs ended, their files
		// deleted): let the machine settle before timing one guest.
		waited, busy := waitQuiet(0.25, time.Minute)
		fmt.Printf("BenchmarkFork: waited %s for a quiet machine (CPU %.0f%% busy)\n", waited.Round(time.Second), 100*busy)
		res.load = append(res.load, loadAvg())
		fmt.Printf("BenchmarkFork: config %d/%d %s (load %.1f)\n", i+1, len(plan.configs), c, res.load[i])
		res.configs = append(res.configs, fb.config(plan, c))
		printRow(res.configs[i])
		key := [2]int64{c.ram, c.ws}
		if _, ok := res.baselines[key]; !ok {
			res.baselines[key] = fb.baseline(c.ram, c.ws)
			br := res.baselines[key]
			fmt.Printf("BenchmarkFork:   baseline save %s ms (%.0f MiB), restore %s ms, calls cold %v warm %v\n",
				ms(br.pause+br.save), mibf(br.stateSize), ms(br.restore), br.calls[0], br.calls[1])
		}
	}
	return res
}

// printRow prints a configuration's main numbers as soon as they exist,
// so a run cut short still shows them.
func printRow(r cfgResult) {
	var api, res []time.Duration
	for _, f := range r.forks {
		api, res = append(api, f.op.api), append(res, f.resume())
	}
	fmt.Printf("BenchmarkFork:   %s standby %s restore %s fork p50 %s (resume %s) pause %s / %s; restore2 %s fk-after %s sb-after %s\n",
		r.cfg, ms(median(apiTimes(r.standby))), ms(r.restore.api), ms(median(api)), ms(median(res)),
		ms(r.runFork.pause), ms(r.runFork2.pause), ms(r.restore2.api), ms(r.runForkAfter.pause), ms(r.standbyAfter.api))
}

// --- API helpers ---------------------------------------------------------

// opSample is one timed API call and the daemon's steps during it.
type opSample struct {
	api   time.Duration
	steps map[string]time.Duration // "op/step" -> took (summed)
}

func (o opSample) step(key string) time.Duration { return o.steps[key] }

// call sends a request and times it; it fails unless the status is want.
func (fb *forkBench) call(method, path string, body any, want int) (instance, opSample) {
	fb.b.Helper()
	mark := logSize(fb.d)
	var in instance
	start := time.Now()
	st, raw := fb.d.do(method, path, body, &in)
	api := time.Since(start)
	if st != want {
		fb.b.Fatalf("%s %s: %d %s, want %d\n%s", method, path, st, raw, want, fb.d.log())
	}
	return in, opSample{api: api, steps: sumSteps(stepsSince(fb.d, mark))}
}

func (fb *forkBench) name(prefix string) string {
	fb.n++
	return fmt.Sprintf("%s-%d", prefix, fb.n)
}

// create makes a Running instance of c (1 vCPU) that idles.
func (fb *forkBench) create(prefix string, c forkCfg) string {
	fb.b.Helper()
	body := map[string]any{"name": fb.name(prefix), "image": fb.img, "size": sizeArg(c.ram),
		"overlay_size": sizeArg(c.disk), "vcpus": 1,
		"entrypoint": []string{"/bin/sh", "-c", "while true; do sleep 3600; done"}}
	in, _ := fb.call("POST", "/instances", body, 201)
	fb.cleanup(in.ID)
	var w struct{ State string }
	if fb.d.do("GET", "/instances/"+in.ID+"/wait?state=Running&timeout=3m", nil, &w); w.State != "Running" {
		fb.b.Fatalf("%s not Running (%s)\n%s", in.Name, w.State, fb.d.log())
	}
	return in.ID
}

func (fb *forkBench) cleanup(id string) {
	fb.b.Cleanup(func() { fb.d.do("DELETE", "/instances/"+id+"?graceful_shutdown=false", nil, nil) })
}

func (fb *forkBench) remove(id string) {
	fb.b.Helper()
	if st, raw := fb.d.do("DELETE", "/instances/"+id+"?graceful_shutdown=false", nil, nil); st != 204 {
		fb.b.Fatalf("delete %s: %d %s", id, st, raw)
	}
}

// sh runs a script in the guest through the API and returns its duration.
func (fb *forkBench) sh(id, script string) time.Duration {
	fb.b.Helper()
	start := time.Now()
	out, code, err := apiExec(fb.d, id, "/bin/sh", "-c", script)
	if err != nil || code != 0 {
		fb.b.Fatalf("exec %q in %s: exit %d: %v: %s\ndaemon:\n%s", script, id, code, err, out, fb.d.log())
	}
	return time.Since(start)
}

// fillScript writes n bytes to path: 1 MiB from /dev/urandom, then the
// file is doubled in place with dd (the kernel's copy runs far faster
// under emulation than the guest's random generator, and no scratch copy
// is left in guest memory). Every page is non-zero and no two pages of a
// MiB are alike, so nothing compresses them in a plain save.
func fillScript(path string, n int64) string {
	return fmt.Sprintf("dd if=/dev/urandom of=%[1]s bs=1M count=1 2>/dev/null && k=1 && while [ $k -lt %[2]d ]; do "+
		"c=$k; [ $((k+c)) -gt %[2]d ] && c=$((%[2]d-k)); "+
		"dd if=%[1]s of=%[1]s bs=1M count=$c skip=0 seek=$k conv=notrunc 2>/dev/null || exit 1; k=$((k+c)); done; "+
		"test $(stat -c %%s %[1]s) -eq %[3]d", path, n/mib, n)
}

// diskScript writes n bytes to a file on the overlay disk and syncs.
func diskScript(n int64) string { return fillScript("/var/disk.bin", n) + " && sync" }

// wsScript writes the working set n to a tmpfs sized to hold it.
func wsScript(n int64) string {
	return "mount -o remount,size=95% /dev/shm && " + fillScript("/dev/shm/ws", n)
}

// fork posts a fork of src and times it; the fork is deleted at the end.
func (fb *forkBench) fork(src string, body map[string]any) (instance, opSample) {
	fb.b.Helper()
	body["name"] = fb.name("fk")
	in, op := fb.call("POST", "/instances/"+src+"/fork", body, 201)
	fb.cleanup(in.ID)
	if in.State != "Running" {
		fb.b.Fatalf("fork %s is %s, want Running", in.Name, in.State)
	}
	return in, op
}

// --- the per-configuration measurements -----------------------------------

// cfgResult is one configuration's measurements.
type cfgResult struct {
	cfg              forkCfg
	fillDisk, fillWS time.Duration
	standby          []opSample // clean: RAM in the instance's own file
	restore          opSample   // clean
	forks            []forkSample
	restore2         opSample        // after the forks (RAM frozen, mapped privately)
	runForkAfter     runFork         // from_running on source A after its forks
	standbyAfter     opSample        // standby of source A after its forks
	runFork          runFork         // from_running on fresh source B (clean)
	runFork2         runFork         // and a second one
	freshPauses      []time.Duration // pauses of from_running forks right after the working set was (re)written
	layers           int             // source A's layer chain after everything
}

// forkSample is one fork from Standby to Running.
type forkSample struct {
	op   opSample
	exec time.Duration // exec of `true` right after
}

func (f forkSample) resume() time.Duration   { return f.op.step("restore/restore-vm") }
func (f forkSample) overhead() time.Duration { return f.op.api - f.resume() }

// answer is how long the resumed guest took to answer the agent's Hello:
// under emulation, mostly the new VMM translating the guest's code again.
// overheadAnswered is the API time beyond the resume and that answer (the
// two overlap by QEMU's `cont`, a millisecond or two).
func (f forkSample) answer() time.Duration           { return f.op.step("agent/answer") }
func (f forkSample) overheadAnswered() time.Duration { return f.overhead() - f.answer() }

// runFork is one fork from Running.
type runFork struct {
	op    opSample
	pause time.Duration // from the fork's hypeman log
	exec  time.Duration
}

func (r runFork) stepPause() time.Duration {
	return r.op.step("freeze-running/pause") + r.op.step("freeze-running/save-state") + r.op.step("freeze-running/load-state")
}

func (fb *forkBench) config(plan forkPlan, c forkCfg) cfgResult {
	b := fb.b
	b.Helper()
	r := cfgResult{cfg: c}
	a := fb.create("src", c)
	r.fillDisk = fb.sh(a, diskScript(plan.diskWrite))
	r.fillWS = fb.sh(a, wsScript(c.ws))
	fmt.Printf("BenchmarkFork:   filled: disk %s ms, working set %s ms\n", ms(r.fillDisk), ms(r.fillWS))
	_, sb := fb.call("POST", "/instances/"+a+"/standby", map[string]any{}, 200)
	r.standby = append(r.standby, sb)
	_, r.restore = fb.call("POST", "/instances/"+a+"/restore", nil, 200)
	fb.sh(a, "true")
	_, sb = fb.call("POST", "/instances/"+a+"/standby", map[string]any{}, 200)
	r.standby = append(r.standby, sb)
	for i := 0; i < plan.perConfig; i++ {
		f, op := fb.fork(a, map[string]any{"target_state": "Running"})
		r.forks = append(r.forks, forkSample{op: op, exec: fb.sh(f.ID, "true")})
		fb.remove(f.ID)
	}
	_, r.restore2 = fb.call("POST", "/instances/"+a+"/restore", nil, 200)
	fb.sh(a, "true")
	r.runForkAfter = fb.forkRunning(a)
	_, r.standbyAfter = fb.call("POST", "/instances/"+a+"/standby", map[string]any{}, 200)
	r.layers = len(readMeta(b, fb.d, a).Layers)
	fb.remove(a)

	src := fb.create("srcb", c)
	fb.sh(src, wsScript(c.ws))
	r.runFork = fb.forkRunning(src)
	r.runFork2 = fb.forkRunning(src)
	r.freshPauses = append(r.freshPauses, r.runFork.pause)
	for i := 1; i < freshForks; i++ {
		// Rewrite the working set: the source's RAM is freshly written
		// again, as for the first fork.
		fb.sh(src, wsScript(c.ws))
		r.freshPauses = append(r.freshPauses, fb.forkRunning(src).pause)
	}
	fb.remove(src)
	return r
}

// freshForks is how many from_running forks of a source that has just
// written its working set each configuration times (the pause's p50).
const freshForks = 3

// forkRunning forks a Running source with from_running and checks the
// fork answers; the fork is deleted.
func (fb *forkBench) forkRunning(src string) runFork {
	f, op := fb.fork(src, map[string]any{"from_running": true})
	r := runFork{op: op, pause: forkPause(fb.b, fb.d, f.ID), exec: fb.sh(f.ID, "true")}
	fb.remove(f.ID)
	return r
}

var pauseRe = regexp.MustCompile(`create-fork ok \(.*pause (\S+)`)

// forkPause reads the source's pause from the fork's operations log.
func forkPause(b *testing.B, d *daemon, id string) time.Duration {
	b.Helper()
	raw, err := os.ReadFile(filepath.Join(d.dataDir, "instances", id, "logs", "hypeman.log"))
	if err != nil {
		b.Fatal(err)
	}
	m := pauseRe.FindStringSubmatch(string(raw))
	if m == nil {
		b.Fatalf("no pause in the fork's log:\n%s", raw)
	}
	p, err := time.ParseDuration(m[1])
	if err != nil {
		b.Fatalf("pause %q: %v", m[1], err)
	}
	return p
}

// forkMeta is the part of an instance's metadata.json the bench reads.
type forkMeta struct {
	Layers     []string `json:"layers"`
	MemoryBase string   `json:"memory_base"`
	VMMGen     int      `json:"vmm_gen"`
}

func readMeta(b *testing.B, d *daemon, id string) forkMeta {
	b.Helper()
	raw, err := os.ReadFile(filepath.Join(d.dataDir, "instances", id, "metadata.json"))
	var m forkMeta
	if err == nil {
		err = json.Unmarshal(raw, &m)
	}
	if err != nil {
		b.Fatalf("metadata of %s: %v", id, err)
	}
	return m
}

// --- the daemon's step log -----------------------------------------------

// stepLine is one "msg=step" debug line of the daemon.
type stepLine struct {
	key  string // op/step
	took time.Duration
	at   time.Time
}

var stepRe = regexp.MustCompile(`^time=(\S+) .*msg=step .*op=(\S+) step=(\S+) took=(\S+)`)

// answerRe matches the agent client's line for a new session: from its
// first Hello (sent before the guest resumes) to the guest's Ack. Taken as
// step "agent/answer".
var answerRe = regexp.MustCompile(`^time=(\S+) .*msg="agent session open" .*took=(\S+)`)

func logSize(d *daemon) int64 {
	fi, err := os.Stat(d.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// stepsSince returns the step lines the daemon logged after offset off.
func stepsSince(d *daemon, off int64) []stepLine {
	f, err := os.Open(d.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(off, 0); err != nil {
		return nil
	}
	var out []stepLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := stepRe.FindStringSubmatch(sc.Text())
		if a := answerRe.FindStringSubmatch(sc.Text()); m == nil && a != nil {
			m = []string{a[0], a[1], "agent", "answer", a[2]}
		}
		if m == nil {
			continue
		}
		took, err := time.ParseDuration(m[4])
		at, _ := time.Parse(time.RFC3339Nano, m[1])
		if err == nil {
			out = append(out, stepLine{key: m[2] + "/" + m[3], took: took, at: at})
		}
	}
	return out
}

func sumSteps(lines []stepLine) map[string]time.Duration {
	m := map[string]time.Duration{}
	for _, l := range lines {
		m[l.key] += l.took
	}
	return m
}

// stepsOf returns the durations of every line with key.
func stepsOf(lines []stepLine, key string) []time.Duration {
	var out []time.Duration
	for _, l := range lines {
		if l.key == key {
			out = append(out, l.took)
		}
	}
	return out
}

// --- baseline: plain QEMU save and restore, anonymous RAM ---------------

// baseResult is a plain save and restore of a guest.
type baseResult struct {
	ram, ws   int64
	fill      time.Duration
	pause     time.Duration // QMP stop
	save      time.Duration // migrate to a file, fsync
	stateSize int64
	restore   time.Duration // QEMU start to running (incoming, load, cont)
	start     time.Duration // of which QEMU start to QMP ready
	exec      time.Duration // first agent exec after the calls below
	// calls are the agent calls a fork's resume makes (bar SetNetwork:
	// no NIC), timed each, twice: right after the restore (the new QEMU's
	// translation cache is empty) and again at once (warm).
	calls [2][]time.Duration
}

// agentCallNames name baseResult.calls.
var agentCallNames = []string{"connect+ping", "hostname", "entropy", "settime"}

func (fb *forkBench) baseline(ram, ws int64) baseResult {
	b := fb.b
	b.Helper()
	fmt.Printf("BenchmarkFork: baseline %s RAM, %s written\n", sizeArg(ram), sizeArg(ws))
	r := baseResult{ram: ram, ws: ws}
	dir, err := os.MkdirTemp("/tmp", "hmforkbench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { killQEMUs(dir); os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	q := qemu.New(qemu.Config{Accel: "tcg"}, nil)
	spec := fb.baseSpec(dir, "a", ram)
	vm, err := q.Start(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { vm.Kill(); vm.Wait(context.Background()) })
	waitAgentReady(b, filepath.Join(dir, "events.log"))
	c := agent.New(agent.UnixDialer(filepath.Join(dir, "a-agent.sock")), nil)
	start := time.Now()
	agentRun(b, c, "/bin/sh", "-c", wsScript(ws))
	r.fill = time.Since(start)
	c.Close()
	snap := vm.(hypervisor.Snapshotter)
	start = time.Now()
	if err := snap.Pause(ctx); err != nil {
		b.Fatal(err)
	}
	r.pause = time.Since(start)
	state := filepath.Join(dir, "state")
	start = time.Now()
	if err := snap.SaveState(ctx, state); err != nil {
		b.Fatal(err)
	}
	r.save = time.Since(start)
	if fi, err := os.Stat(state); err == nil {
		r.stateSize = fi.Size()
	}
	vm.Kill()
	vm.Wait(ctx)
	fb.baseRestore(ctx, q, &r, dir, spec, state)
	return r
}

// baseRestore restores the saved state into a new QEMU and checks the
// guest answers.
func (fb *forkBench) baseRestore(ctx context.Context, q *qemu.QEMU, r *baseResult, dir string, old hypervisor.Spec, state string) {
	b := fb.b
	b.Helper()
	spec := fb.baseSpec(dir, "b", r.ram)
	spec.Disks = old.Disks
	_ = os.Remove(filepath.Join(dir, "b-overlay.qcow2"))
	start := time.Now()
	vm, err := q.StartIncoming(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { vm.Kill(); vm.Wait(context.Background()) })
	r.start = time.Since(start)
	if err := vm.(hypervisor.StateLoader).LoadState(ctx, state); err != nil {
		b.Fatal(err)
	}
	if err := vm.(hypervisor.Snapshotter).Resume(ctx); err != nil {
		b.Fatal(err)
	}
	r.restore = time.Since(start)
	c := agent.New(agent.UnixDialer(filepath.Join(dir, "b-agent.sock")), nil)
	defer c.Close()
	for round := range r.calls {
		if round > 0 {
			c.Reset() // a new session, as after a restore
		}
		r.calls[round] = agentCalls(ctx, b, c)
	}
	start = time.Now()
	agentRun(b, c, "true")
	r.exec = time.Since(start)
	vm.Kill()
	vm.Wait(ctx)
}

// agentCalls times the agent calls of a fork's resume, one by one.
func agentCalls(ctx context.Context, b *testing.B, c *agent.Client) []time.Duration {
	b.Helper()
	calls := []func() error{
		func() error { return c.Ping(ctx) },
		func() error { return c.SetHostname(ctx, "base") },
		func() error { return c.AddEntropy(ctx, make([]byte, 64)) },
		func() error { return c.SetTime(ctx, time.Now()) },
	}
	var out []time.Duration
	for i, call := range calls {
		start := time.Now()
		if err := call(); err != nil {
			b.Fatalf("agent %s: %v", agentCallNames[i], err)
		}
		out = append(out, time.Since(start))
	}
	return out
}

// baseSpec is the daemon's VM for the demo image (1 vCPU, ram), without
// a NIC and with anonymous RAM; files in dir prefixed by tag.
func (fb *forkBench) baseSpec(dir, tag string, ram int64) hypervisor.Spec {
	b := fb.b
	b.Helper()
	var im struct{ Digest string }
	if st, raw := fb.d.do("GET", "/images/"+escapeRef(fb.img), nil, &im); st != 200 {
		b.Fatalf("image: %d %s", st, raw)
	}
	rootfs := filepath.Join(fb.d.dataDir, "images", "digests", strings.TrimPrefix(im.Digest, "sha256:"), "rootfs.erofs")
	initrds, _ := filepath.Glob(filepath.Join(fb.d.dataDir, "system", "initrd", "*.cpio"))
	sort.Slice(initrds, func(i, j int) bool { return modTime(initrds[i]).After(modTime(initrds[j])) })
	if len(initrds) == 0 {
		b.Fatal("no initrd in the daemon's data dir")
	}
	p := func(name string) string { return filepath.Join(dir, tag+"-"+name) }
	err := storage.New(filepath.Join(dir, "templates")).CreateOverlay(context.Background(), p("overlay.qcow2"), gib)
	cfg, _ := vmconfig.Encode(vmconfig.Config{
		InstanceID: "base", Hostname: "base", StopTimeoutSeconds: 1,
		Entrypoint: []string{"/bin/sh", "-c", "while true; do sleep 3600; done"}, Env: []string{"PATH=/bin"},
	})
	if err == nil {
		err = os.WriteFile(p("config.img"), cfg, 0o644)
	}
	events := filepath.Join(dir, "events.log")
	if _, serr := os.Stat(events); err == nil && os.IsNotExist(serr) {
		err = os.WriteFile(events, nil, 0o644)
	}
	if err != nil {
		b.Fatal(err)
	}
	return hypervisor.Spec{
		Name: "base-" + tag, VCPUs: 1, MemoryBytes: ram, // no MemoryFile: anonymous RAM
		Kernel: os.Getenv(envKernel), Initrd: initrds[0], Cmdline: "console=ttyS0 panic=-1 quiet loglevel=3",
		Disks: []hypervisor.Disk{
			{Path: rootfs, Format: hypervisor.FormatRaw, ReadOnly: true, Serial: vmconfig.SerialRootfs},
			{Path: p("overlay.qcow2"), Format: hypervisor.FormatQCOW2, Serial: vmconfig.SerialOverlay},
			{Path: p("config.img"), Format: hypervisor.FormatRaw, ReadOnly: true, Serial: vmconfig.SerialConfig},
		},
		ConsoleLog: p("console.log"),
		Ports: []hypervisor.Port{
			{Name: vmconfig.PortEvents, Kind: hypervisor.PortFile, Path: events},
			{Name: vmconfig.PortAgent, Kind: hypervisor.PortSocket, Path: p("agent.sock")},
		},
		ControlSocket: p("qmp.sock"), PIDFile: p("qemu.pid"), VMMLog: p("vmm.log"), Accel: "tcg",
	}
}

// --- concurrent forks ----------------------------------------------------

// concResult is N concurrent forks of one Standby source.
type concResult struct {
	n       int
	running int
	api     []time.Duration // of the forks that returned 201
	errs    []string
	exec    []time.Duration
	wall    time.Duration
	steps   []stepLine
}

// forkAll forks src n times at once (target Running) and returns each
// fork's ID ("" on failure), API time and error.
func (fb *forkBench) forkAll(src string, n int) ([]string, []time.Duration, []string) {
	ids, api, errs := make([]string, n), make([]time.Duration, n), make([]string, n)
	names := make([]string, n)
	for i := range names {
		names[i] = fb.name("fk")
	}
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			var in instance
			start := time.Now()
			st, raw := fb.d.do("POST", "/instances/"+src+"/fork", map[string]any{"name": names[i], "target_state": "Running"}, &in)
			api[i] = time.Since(start)
			if st != 201 || in.State != "Running" {
				errs[i] = fmt.Sprintf("%d %s %s", st, in.State, strings.TrimSpace(string(raw)))
				return
			}
			ids[i] = in.ID
		}()
	}
	close(gate)
	wg.Wait()
	for _, id := range ids {
		if id != "" {
			fb.cleanup(id)
		}
	}
	return ids, api, errs
}

func (fb *forkBench) concurrentForks(plan forkPlan) concResult {
	src := fb.create("srcc", forkCfg{ram: plan.concRAM, disk: gib})
	fb.sh(src, wsScript(256*mib))
	fb.call("POST", "/instances/"+src+"/standby", map[string]any{}, 200)
	r := concResult{n: plan.concurrent}
	mark := logSize(fb.d)
	start := time.Now()
	ids, api, errs := fb.forkAll(src, plan.concurrent)
	r.wall = time.Since(start)
	r.steps = stepsSince(fb.d, mark)
	for i, id := range ids {
		if id == "" {
			r.errs = append(r.errs, errs[i])
			continue
		}
		r.running++
		r.api = append(r.api, api[i])
		r.exec = append(r.exec, fb.sh(id, "true"))
	}
	removeAll(fb, append(ids, src))
	return r
}

// removeAll deletes instances, a few at a time.
func removeAll(fb *forkBench, ids []string) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for _, id := range ids {
		if id == "" {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fb.d.do("DELETE", "/instances/"+id+"?graceful_shutdown=false", nil, nil)
		}()
	}
	wg.Wait()
}

// --- idle forks and their memory -----------------------------------------

// idleResult is many idle forks of one source and their host memory.
type idleResult struct {
	want, reached int
	stopped       string // why creation stopped early
	api           []time.Duration
	batchWall     []time.Duration
	exec          []time.Duration
	mem           []procMem
	memAvailDrop  int64 // MemAvailable before the forks minus after
	layers        int   // the source's layer chain at the end
	took          time.Duration
}

// procMem is one QEMU process's memory, from /proc/<pid>/smaps.
type procMem struct {
	pss, rss, privDirty, anon int64
	guestAnon, guestPss       int64 // the guest RAM mapping (memory base)
	tcgPss                    int64 // anonymous executable mappings (TCG code)
}

// extra is what the process adds beyond the guest pages it wrote itself.
func (p procMem) extra() int64 { return p.pss - p.guestAnon }

func (fb *forkBench) idleForks(plan forkPlan) idleResult {
	b := fb.b
	r := idleResult{want: plan.idle}
	src := fb.create("srci", forkCfg{ram: plan.idleRAM, disk: gib})
	fb.sh(src, wsScript(256*mib))
	fb.call("POST", "/instances/"+src+"/standby", map[string]any{}, 200)
	before := memAvailable()
	start := time.Now()
	var ids []string
	for len(ids) < plan.idle && r.stopped == "" {
		n := min(plan.idleBatch, plan.idle-len(ids))
		bstart := time.Now()
		got, api, errs := fb.forkAll(src, n)
		r.batchWall = append(r.batchWall, time.Since(bstart))
		for i, id := range got {
			if id == "" {
				r.stopped = "fork failed: " + errs[i]
				continue
			}
			ids = append(ids, id)
			r.api = append(r.api, api[i])
		}
		if r.stopped == "" && len(ids) < plan.idle && time.Since(start).Minutes() > plan.idleBudget {
			r.stopped = fmt.Sprintf("time budget of %.0f min spent", plan.idleBudget)
		}
		fmt.Printf("BenchmarkFork: idle forks %d (batch %s, load %.1f)\n", len(ids), r.batchWall[len(r.batchWall)-1].Round(time.Millisecond), loadAvg())
	}
	r.reached, r.took = len(ids), time.Since(start)
	for _, id := range ids {
		r.exec = append(r.exec, fb.sh(id, "true"))
	}
	time.Sleep(10 * time.Second) // let the guests settle after the exec
	for _, id := range ids {
		m := readMeta(b, fb.d, id)
		pid := pidFromFile(b, filepath.Join(fb.d.dataDir, "instances", id, fmt.Sprintf("qemu-%d.pid", m.VMMGen)))
		pm, err := readProcMem(pid, m.MemoryBase)
		if err != nil {
			b.Fatalf("memory of fork %s: %v", id, err)
		}
		r.mem = append(r.mem, pm)
	}
	r.memAvailDrop = before - memAvailable()
	r.layers = len(readMeta(b, fb.d, src).Layers)
	removeAll(fb, append(ids, src))
	return r
}

// readProcMem sums /proc/<pid>/smaps, and separately the mapping of
// guestFile and the anonymous executable mappings.
func readProcMem(pid int, guestFile string) (procMem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return procMem{}, err
	}
	defer f.Close()
	var p procMem
	var path, perms string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			perms, path = fields[1], ""
			if len(fields) >= 6 {
				path = strings.Join(fields[5:], " ")
			}
			continue
		}
		if len(fields) < 2 {
			continue
		}
		var kb int64
		fmt.Sscan(fields[1], &kb)
		v := kb << 10
		guest := guestFile != "" && strings.HasPrefix(path, guestFile)
		tcg := path == "" && strings.Contains(perms, "x")
		switch fields[0] {
		case "Pss:":
			p.pss += v
			if guest {
				p.guestPss += v
			}
			if tcg {
				p.tcgPss += v
			}
		case "Rss:":
			p.rss += v
		case "Private_Dirty:":
			p.privDirty += v
		case "Anonymous:":
			p.anon += v
			if guest {
				p.guestAnon += v
			}
		}
	}
	return p, sc.Err()
}

// memAvailable returns the host's MemAvailable in bytes.
func memAvailable() int64 {
	raw, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb << 10
		}
	}
	return 0
}

// waitQuiet waits until the host's CPUs are less than maxBusy busy over a
// second (or limit has passed), and returns how long it waited and the
// last busy fraction.
func waitQuiet(maxBusy float64, limit time.Duration) (time.Duration, float64) {
	start := time.Now()
	for {
		a := cpuTimes()
		time.Sleep(time.Second)
		b := cpuTimes()
		busy := 0.0
		if total := b[0] - a[0]; total > 0 {
			busy = 1 - (b[1]-a[1])/total
		}
		if busy < maxBusy || time.Since(start) > limit {
			return time.Since(start), busy
		}
	}
}

// cpuTimes returns the host's total and idle (idle + iowait) CPU ticks.
func cpuTimes() [2]float64 {
	raw, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	var t [2]float64
	for i, v := range f[1:] {
		n, _ := strconv.ParseFloat(v, 64)
		t[0] += n
		if i == 3 || i == 4 {
			t[1] += n
		}
	}
	return t
}

// loadAvg returns the host's 1-minute load average.
func loadAvg() float64 {
	raw, _ := os.ReadFile("/proc/loadavg")
	var l float64
	fmt.Sscan(string(raw), &l)
	return l
}

// --- report ----------------------------------------------------------------

func passMiss(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func mibf(n int64) float64 { return float64(n) / float64(mib) }

func apiTimes(ops []opSample) []time.Duration {
	var out []time.Duration
	for _, o := range ops {
		out = append(out, o.api)
	}
	return out
}

func reportFork(b *testing.B, plan forkPlan, res forkResults) {
	var w strings.Builder
	fmt.Fprintf(&w, "\nBenchmarkFork (%s plan, data dir freezing by %s): times in ms; standby/restore/fork = API request to answer.\n",
		plan.name, os.Getenv("HYPEMAN_FREEZE_MODE"))
	reportConfigs(&w, res)
	reportBaselines(&w, res)
	reportConc(&w, res.conc)
	reportIdle(&w, res.idle)
	reportTargets(&w, b, plan, res)
	fmt.Print(w.String())
	b.ReportMetric(0, "ns/op")
}

func reportConfigs(w *strings.Builder, res forkResults) {
	fmt.Fprintf(w, "\nPer configuration (RAM/working set/overlay; load = 1-min load average at start):\n")
	fmt.Fprintf(w, "%-14s %5s %8s %8s %8s %8s %8s | %8s %8s %8s %8s %8s %8s %8s | %8s %8s %8s %8s | %8s %8s %8s %4s\n",
		"config", "load", "fill-dsk", "fill-ws", "standby", "sb-save", "restore",
		"fork-api", "resume", "overhd", "answer", "ovh-ans", "fork-ex", "frz-src",
		"runfk", "pause", "pause#2", "runfk#2", "restore2", "fk-after", "sb-after", "lyrs")
	for i, r := range res.configs {
		var fapi, fres, fover, fans, fovans, fexec, ffrz []time.Duration
		for _, f := range r.forks {
			fapi, fres, fover = append(fapi, f.op.api), append(fres, f.resume()), append(fover, f.overhead())
			fans, fovans = append(fans, f.answer()), append(fovans, f.overheadAnswered())
			fexec, ffrz = append(fexec, f.exec), append(ffrz, f.op.step("fork/freeze-source"))
		}
		var sbSave []time.Duration
		for _, s := range r.standby {
			sbSave = append(sbSave, s.step("standby/save-state"))
		}
		fmt.Fprintf(w, "%-14s %5.1f %8s %8s %8s %8s %8s | %8s %8s %8s %8s %8s %8s %8s | %8s %8s %8s %8s | %8s %8s %8s %4d\n",
			r.cfg, res.load[i], ms(r.fillDisk), ms(r.fillWS), ms(median(apiTimes(r.standby))), ms(median(sbSave)), ms(r.restore.api),
			ms(median(fapi)), ms(median(fres)), ms(median(fover)), ms(median(fans)), ms(median(fovans)), ms(median(fexec)), ms(median(ffrz)),
			ms(r.runFork.op.api), ms(r.runFork.pause), ms(r.runFork2.pause), ms(r.runFork2.op.api),
			ms(r.restore2.api), ms(r.runForkAfter.pause), ms(r.standbyAfter.api), r.layers)
	}
	fmt.Fprintf(w, "fork-api/resume/overhd/answer/ovh-ans/fork-ex/frz-src: p50 of the forks from Standby (resume = restore-vm step, overhd = api - resume,\n")
	fmt.Fprintf(w, "  answer = first Hello to the resumed guest's Ack, ovh-ans = overhd - answer,\n")
	fmt.Fprintf(w, "  fork-ex = exec `true` after it, frz-src = freeze-source step). runfk/pause: first from_running fork of a fresh source\n")
	fmt.Fprintf(w, "  (API, source pause from the fork's log); pause#2/runfk#2: a second one. restore2: restore after the forks;\n")
	fmt.Fprintf(w, "  fk-after: pause of a from_running fork after those; sb-after: standby after that; lyrs: the source's layer chain.\n")
	fmt.Fprintf(w, "\nEvery fork from Standby (config: api/resume/exec ms; dominant steps):\n")
	for _, r := range res.configs {
		fmt.Fprintf(w, "%-14s", r.cfg)
		for _, f := range r.forks {
			fmt.Fprintf(w, " %s/%s/%s", ms(f.op.api), ms(f.resume()), ms(f.exec))
		}
		if len(r.forks) > 0 {
			fmt.Fprintf(w, "  [%s]", topSteps(r.forks[len(r.forks)-1].op.steps, 6))
		}
		fmt.Fprintf(w, "\n")
	}
	fmt.Fprintf(w, "\nStep breakdowns (last sample of each kind):\n")
	for _, r := range res.configs {
		fmt.Fprintf(w, "%-14s standby [%s]\n", r.cfg, topSteps(r.standby[0].steps, 5))
		fmt.Fprintf(w, "%-14s restore [%s]\n", "", topSteps(r.restore.steps, 5))
		fmt.Fprintf(w, "%-14s runfk   [%s]\n", "", topSteps(r.runFork.op.steps, 8))
		fmt.Fprintf(w, "%-14s runfk#2 [%s]\n", "", topSteps(r.runFork2.op.steps, 6))
		fmt.Fprintf(w, "%-14s sb-after[%s]\n", "", topSteps(r.standbyAfter.steps, 4))
		fmt.Fprintf(w, "%-14s restore2[%s]\n", "", topSteps(r.restore2.steps, 4))
	}
}

// topSteps lists the n longest steps.
func topSteps(m map[string]time.Duration, n int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	var parts []string
	for _, k := range keys[:min(n, len(keys))] {
		parts = append(parts, k+"="+ms(m[k]))
	}
	return strings.Join(parts, " ")
}

func sortedBaselines(res forkResults) []baseResult {
	var out []baseResult
	for _, v := range res.baselines {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].ram < out[j].ram || out[i].ram == out[j].ram && out[i].ws < out[j].ws
	})
	return out
}

func reportBaselines(w *strings.Builder, res forkResults) {
	fmt.Fprintf(w, "\nBaseline: plain QEMU, anonymous RAM, stop + migrate to a file (fsync), restore = QEMU start to running:\n")
	fmt.Fprintf(w, "%-10s %9s %8s %8s %9s %10s %9s %8s %8s | %10s %10s %10s\n", "RAM/ws", "fill", "stop", "save",
		"state-MiB", "restore", "qemu-up", "exec", "", "hm-standby", "save/sb", "hm-restore")
	for _, r := range sortedBaselines(res) {
		sb, rs := hmFor(res, r.ram, r.ws)
		fmt.Fprintf(w, "%-10s %9s %8s %8s %9.1f %10s %9s %8s %8s | %10s %10.0fx %10s\n",
			sizeArg(r.ram)+"/"+sizeArg(r.ws), ms(r.fill), ms(r.pause), ms(r.save), mibf(r.stateSize), ms(r.restore),
			ms(r.start), ms(r.exec), "", ms(sb), float64(r.pause+r.save)/float64(sb), ms(rs))
	}
	fmt.Fprintf(w, "Agent calls right after the baseline restore, cold then warm (ms):\n")
	for _, r := range sortedBaselines(res) {
		fmt.Fprintf(w, "%-10s", sizeArg(r.ram)+"/"+sizeArg(r.ws))
		for round, calls := range r.calls {
			fmt.Fprintf(w, "  %s:", []string{"cold", "warm"}[round])
			for i, d := range calls {
				fmt.Fprintf(w, " %s %s", agentCallNames[i], ms(d))
			}
		}
		fmt.Fprintf(w, "\n")
	}
}

// hmFor returns hypeman's standby and restore p50 over the configurations
// of ram and ws.
func hmFor(res forkResults, ram, ws int64) (time.Duration, time.Duration) {
	var sb, rs []time.Duration
	for _, r := range res.configs {
		if r.cfg.ram == ram && r.cfg.ws == ws {
			sb = append(sb, apiTimes(r.standby)...)
			rs = append(rs, r.restore.api)
		}
	}
	return median(sb), median(rs)
}

func reportConc(w *strings.Builder, c concResult) {
	fmt.Fprintf(w, "\n%d concurrent forks of one Standby source (target Running): %d reached Running in %s ms wall\n",
		c.n, c.running, ms(c.wall))
	if len(c.api) > 0 {
		s := slices.Clone(c.api)
		slices.Sort(s)
		var parts []string
		for _, d := range s {
			parts = append(parts, ms(d))
		}
		fmt.Fprintf(w, "  API times sorted: %s\n", strings.Join(parts, " "))
		fmt.Fprintf(w, "  p50 %s ms, p95 %s ms, p95/p50 %.2f; exec p50 %s ms\n", ms(median(c.api)), ms(pct(c.api, 0.95)),
			float64(pct(c.api, 0.95))/float64(median(c.api)), ms(median(c.exec)))
	}
	var busy time.Duration
	for _, k := range []string{"fork/freeze-source", "fork/make-fork", "fork/target-state"} {
		for _, d := range stepsOf(c.steps, k) {
			busy += d
		}
	}
	fmt.Fprintf(w, "  sum of the forks' steps (freeze-source+make-fork+target-state) %s ms vs wall %s ms: ratio %.2f (1.0 = fully serialized)\n",
		ms(busy), ms(c.wall), float64(busy)/float64(c.wall))
	rv := stepsOf(c.steps, "restore/restore-vm")
	if len(rv) > 0 {
		fmt.Fprintf(w, "  restore-vm step: p50 %s ms, max %s ms; target-state p50 %s ms\n", ms(median(rv)), ms(slices.Max(rv)),
			ms(median(stepsOf(c.steps, "fork/target-state"))))
	}
	for _, e := range c.errs {
		fmt.Fprintf(w, "  failed: %s\n", e)
	}
}

func reportIdle(w *strings.Builder, r idleResult) {
	fmt.Fprintf(w, "\nIdle forks of a 1 GiB Standby source (256 MiB written), batches created concurrently: %d of %d in %s s",
		r.reached, r.want, fmt.Sprintf("%.1f", r.took.Seconds()))
	if r.stopped != "" {
		fmt.Fprintf(w, " (stopped: %s)", r.stopped)
	}
	fmt.Fprintf(w, "; source layer chain %d\n", r.layers)
	if len(r.api) == 0 {
		return
	}
	n := len(r.api)
	first, last := r.api[:min(10, n)], r.api[max(0, n-10):]
	fmt.Fprintf(w, "  fork API p50 %s ms (first 10: %s, last 10: %s); batch walls:", ms(median(r.api)), ms(median(first)), ms(median(last)))
	for _, d := range r.batchWall {
		fmt.Fprintf(w, " %s", ms(d))
	}
	fmt.Fprintf(w, "\n  exec p50 %s ms\n", ms(median(r.exec)))
	var pss, extra, anon, gAnon, priv, tcg []float64
	for _, m := range r.mem {
		pss, extra, anon = append(pss, mibf(m.pss)), append(extra, mibf(m.extra())), append(anon, mibf(m.anon))
		gAnon, priv, tcg = append(gAnon, mibf(m.guestAnon)), append(priv, mibf(m.privDirty)), append(tcg, mibf(m.tcgPss))
	}
	fmt.Fprintf(w, "  per QEMU (MiB)      %8s %8s %8s\n", "mean", "p50", "max")
	for _, row := range []struct {
		name string
		xs   []float64
	}{{"Pss", pss}, {"Private_Dirty", priv}, {"Anonymous", anon}, {"guest-written", gAnon},
		{"TCG code (anon x)", tcg}, {"Pss - own written", extra}} {
		fmt.Fprintf(w, "  %-18s %8.1f %8.1f %8.1f\n", row.name, mean(row.xs), median(row.xs), slices.Max(row.xs))
	}
	fmt.Fprintf(w, "  host MemAvailable drop: %.0f MiB total, %.1f MiB per fork\n", mibf(r.memAvailDrop), mibf(r.memAvailDrop)/float64(len(r.mem)))
	if len(r.mem) >= 20 {
		fmt.Fprintf(w, "  Pss - own written, first 10 forks p50 %.1f MiB, last 10 p50 %.1f MiB\n",
			median(extra[:10]), median(extra[len(extra)-10:]))
	}
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / math.Max(1, float64(len(xs)))
}

// reportTargets prints each target with PASS or MISS and reports metrics.
func reportTargets(w *strings.Builder, b *testing.B, plan forkPlan, res forkResults) {
	fmt.Fprintf(w, "\nTargets:\n")
	// Fork from Standby: overhead above resume <= 150 ms, API p50 within
	// +-20% across sizes.
	var p50s []time.Duration
	maxOver, maxOverAns := time.Duration(0), time.Duration(0)
	for _, r := range res.configs {
		var api, over, overAns []time.Duration
		for _, f := range r.forks {
			api, over, overAns = append(api, f.op.api), append(over, f.overhead()), append(overAns, f.overheadAnswered())
		}
		p50s = append(p50s, median(api))
		maxOver = max(maxOver, median(over))
		maxOverAns = max(maxOverAns, median(overAns))
		b.ReportMetric(msf(median(api)), "fork-api-p50-ms:"+r.cfg.String())
	}
	mid := median(p50s)
	spread := 0.0
	for _, p := range p50s {
		spread = math.Max(spread, math.Abs(float64(p)/float64(mid)-1))
	}
	fmt.Fprintf(w, "  fork Standby->Running: worst config p50 of (API - resume) %s ms <= 150: %s\n", ms(maxOver), passMiss(maxOver <= 150*time.Millisecond))
	fmt.Fprintf(w, "    (counting the resumed guest's first answer as part of its resume: worst p50 %s ms <= 150: %s)\n", ms(maxOverAns), passMiss(maxOverAns <= 150*time.Millisecond))
	b.ReportMetric(msf(maxOverAns), "fork-overhead-answered-worst-p50-ms")
	fmt.Fprintf(w, "  fork Standby->Running: config API p50s within %.0f%% of their median %s ms (<= 20%%): %s\n", spread*100, ms(mid), passMiss(spread <= 0.2))
	b.ReportMetric(msf(maxOver), "fork-overhead-worst-p50-ms")
	// from_running pause per RAM size.
	byRAM := map[int64][]time.Duration{}
	for _, r := range res.configs {
		byRAM[r.cfg.ram] = append(byRAM[r.cfg.ram], r.freshPauses...)
	}
	for _, ram := range sortedKeys(byRAM) {
		p := median(byRAM[ram])
		var all []string
		for _, d := range byRAM[ram] {
			all = append(all, ms(d))
		}
		fmt.Fprintf(w, "  from_running pause p50 at %s RAM (%d forks right after the working set was written: %s): %s ms <= 50: %s\n",
			sizeArg(ram), len(byRAM[ram]), strings.Join(all, " "), ms(p), passMiss(p <= 50*time.Millisecond))
		b.ReportMetric(msf(p), "pause-p50-ms:"+sizeArg(ram))
	}
	// Standby vs baseline save at 1 GiB written.
	for _, base := range sortedBaselines(res) {
		if base.ws != gib {
			continue
		}
		sb, _ := hmFor(res, base.ram, base.ws)
		x := float64(base.pause+base.save) / float64(sb)
		fmt.Fprintf(w, "  standby vs plain save at %s RAM, 1 GiB written: %s vs %s ms = %.0fx >= 100x: %s\n",
			sizeArg(base.ram), ms(sb), ms(base.pause+base.save), x, passMiss(x >= 100))
		b.ReportMetric(x, "save-over-standby:"+sizeArg(base.ram))
	}
	// Restore 8 GiB vs 512 MiB.
	var small, big []time.Duration
	for _, r := range res.configs {
		switch r.cfg.ram {
		case 512 * mib:
			small = append(small, r.restore.api)
		case 8 * gib:
			big = append(big, r.restore.api)
		}
	}
	if len(small) > 0 && len(big) > 0 {
		x := float64(median(big)) / float64(median(small))
		fmt.Fprintf(w, "  restore 8GB / 512MB: %s / %s ms = %.2fx <= 1.5x: %s\n", ms(median(big)), ms(median(small)), x, passMiss(x <= 1.5))
		b.ReportMetric(x, "restore-8g-over-512m")
	}
	c := res.conc
	if len(c.api) > 0 {
		x := float64(pct(c.api, 0.95)) / float64(median(c.api))
		fmt.Fprintf(w, "  %d concurrent forks: %d/%d Running, p95/p50 %.2f <= 3: %s\n", c.n, c.running, c.n, x, passMiss(c.running == c.n && x <= 3))
		b.ReportMetric(float64(c.running), "concurrent-running")
		b.ReportMetric(msf(median(c.api)), "concurrent-p50-ms")
		b.ReportMetric(x, "concurrent-p95-over-p50")
	}
	if len(res.idle.mem) > 0 {
		worst := int64(0)
		for _, m := range res.idle.mem {
			worst = max(worst, m.extra())
		}
		fmt.Fprintf(w, "  %d idle forks (of %d wanted): worst Pss beyond own written pages %.1f MiB <= 50: %s\n",
			res.idle.reached, res.idle.want, mibf(worst), passMiss(worst <= 50*mib && res.idle.reached == res.idle.want))
		b.ReportMetric(mibf(worst), "idle-fork-extra-max-MiB")
		b.ReportMetric(float64(res.idle.reached), "idle-forks")
	}
}

func sortedKeys[V any](m map[int64]V) []int64 {
	var ks []int64
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
