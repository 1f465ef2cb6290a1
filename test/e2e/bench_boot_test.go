package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hypeman-vm/hypeman/internal/guest/events"
)

// BenchmarkBoot compares, in one run and side by side, create-to-Running
// through the API with a bare qemu-system-x86_64 boot of the same kernel,
// initramfs and kinds of disks, and reports the ratio of the medians.
//
// Run (as root, after `make build`):
//
//	cd test/e2e && go test -run '^$' -bench BenchmarkBoot -benchtime 6x -count 1 .
//
// Each loop iteration boots once through the API and once bare, in that
// order (ABAB...), so drift on a noisy machine hits both sides alike.
//
//   - API: from just before POST /instances to the answer of
//     GET /instances/{id}/wait?state=Running. Everything the daemon does
//     (overlay, TAP, config disk, memory file, QEMU, noticing program_start)
//     is inside that time. The instance is deleted afterwards, untimed.
//   - Bare: the exact argv of a VM the daemon started (read once from
//     /proc/<pid>/cmdline of a reference instance), with every per-instance
//     path moved to a scratch dir holding fresh disks of the same kinds and
//     the NIC on a TAP made for the bench. Timed from just before exec to the
//     first poll (every 5 ms) that finds program_start in events.log. Making
//     the scratch files is not timed: it is the bare side's prep, whereas the
//     API's time includes the daemon's own prep.
//
// No timing is asserted (the machine is noisy); a boot that does not reach
// Running or program_start within 3 minutes fails the benchmark.
func BenchmarkBoot(b *testing.B) {
	d, img := benchDaemon(b)
	ref := captureBareBoot(b, d, img)
	tap := benchTAP(b)
	var api []apiBoot
	var bare []bareBoot
	for i := 0; b.Loop(); i++ {
		api = append(api, bootThroughAPI(b, d, img, i))
		bare = append(bare, bootBare(b, ref, tap, i))
	}
	reportBoots(b, api, bare)
}

// benchBootTimeout bounds one boot, both sides.
const benchBootTimeout = 3 * time.Minute

// benchPoll is how often the bare side looks at events.log and QMP.
const benchPoll = 5 * time.Millisecond

// benchDaemon starts a daemon of the benchmark's own (so no test's VMs
// compete for the CPU) and pushes the busybox demo image to it.
func benchDaemon(b *testing.B) (*daemon, string) {
	d := newDaemon(b, "bench")
	out, err := d.cli(b, "push", imageTar(b, "busybox"), demoImageTag)
	if err != nil {
		b.Fatal(err)
	}
	ref, _, _ := strings.Cut(strings.TrimSpace(out), "@")
	ref += ":latest"
	if err := waitImageReady(d, ref); err != nil {
		b.Fatal(err)
	}
	return d, ref
}

// apiBoot is one create-to-Running through the API.
type apiBoot struct {
	total  time.Duration // POST sent to wait answered
	post   time.Duration // POST sent to its 201
	create time.Duration // the daemon's own "create ok (...)" op-log time
	detect time.Duration // last write of events.log to the wait's answer
}

func bootThroughAPI(b *testing.B, d *daemon, img string, i int) apiBoot {
	b.Helper()
	body := map[string]any{"name": fmt.Sprintf("bench-%d", i), "image": img}
	var in instance
	start := time.Now()
	st, raw := d.do("POST", "/instances", body, &in)
	post := time.Since(start)
	if st != 201 {
		b.Fatalf("create: status %d: %s\n%s", st, raw, d.log())
	}
	b.Cleanup(func() { d.do("DELETE", "/instances/"+in.ID+"?graceful_shutdown=false", nil, nil) })
	var w struct {
		State    string `json:"state"`
		TimedOut bool   `json:"timed_out"`
	}
	st, raw = d.do("GET", "/instances/"+in.ID+"/wait?state=Running&timeout=3m", nil, &w)
	answered := time.Now()
	total := answered.Sub(start)
	if st != 200 || w.State != "Running" {
		app, _ := os.ReadFile(filepath.Join(d.dataDir, "instances", in.ID, "logs", "app.log"))
		b.Fatalf("wait Running for %s: status %d %s\napp log:\n%s\ndaemon:\n%s", in.ID, st, raw, app, d.log())
	}
	create := opLogDuration(filepath.Join(d.dataDir, "instances", in.ID, "logs", "hypeman.log"), "create")
	detect := sinceModified(filepath.Join(d.dataDir, "instances", in.ID, "events.log"), answered)
	if st, raw := d.do("DELETE", "/instances/"+in.ID+"?graceful_shutdown=false", nil, nil); st != 204 {
		b.Fatalf("delete %s: %d %s", in.ID, st, raw)
	}
	return apiBoot{total: total, post: post, create: create, detect: detect}
}

// sinceModified is how long before t the file at path was last written
// (ext4 timestamps are as coarse as a kernel tick, a few ms).
func sinceModified(path string, t time.Time) time.Duration {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return t.Sub(fi.ModTime())
}

// opLogDuration returns the duration of the first "<op> ok (<d>)" line of an
// instance's operations log, or 0 if there is none.
func opLogDuration(path, op string) time.Duration {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	re := regexp.MustCompile(` ` + regexp.QuoteMeta(op) + ` ok \(([^)]+)\)`)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			if dur, err := time.ParseDuration(m[1]); err == nil {
				return dur
			}
		}
	}
	return 0
}

// bareRecipe is what a bare boot needs, taken from a VM the daemon started.
type bareRecipe struct {
	argv     []string // the daemon's QEMU argv
	instDir  string   // the reference instance's dir, to be replaced in argv
	tap      string   // the reference instance's TAP, to be replaced in argv
	base     string   // holds the initramfs kept from the reference instance
	config   []byte   // config disk content
	template string   // ext4 template the overlay is backed by
	memSize  int64
}

// captureBareBoot boots a reference instance through the API, records its
// QEMU argv, config disk, overlay template and memory size, then deletes it.
func captureBareBoot(b *testing.B, d *daemon, img string) bareRecipe {
	b.Helper()
	var in instance
	if st, raw := d.do("POST", "/instances", map[string]any{"name": "bench-ref", "image": img}, &in); st != 201 {
		b.Fatalf("create reference: %d %s\n%s", st, raw, d.log())
	}
	b.Cleanup(func() { d.do("DELETE", "/instances/"+in.ID+"?graceful_shutdown=false", nil, nil) })
	var w struct{ State string }
	if d.do("GET", "/instances/"+in.ID+"/wait?state=Running&timeout=3m", nil, &w); w.State != "Running" {
		b.Fatalf("reference instance not Running (%s)\n%s", w.State, d.log())
	}
	dir := filepath.Join(d.dataDir, "instances", in.ID)
	r := bareRecipe{instDir: dir, tap: refTAP(b, d, in.ID), base: filepath.Join(d.dataDir, "bench")}
	r.argv = qemuArgv(b, filepath.Join(dir, "qemu-0.pid"))
	var err error
	if r.config, err = os.ReadFile(filepath.Join(dir, "config.img")); err != nil {
		b.Fatal(err)
	}
	r.template = backingFile(b, filepath.Join(dir, "overlay-0.qcow2"))
	fi, err := os.Stat(filepath.Join(dir, "mem"))
	if err != nil {
		b.Fatal(err)
	}
	r.memSize = fi.Size()
	// Keep the initramfs the daemon links per instance (a hard link, as the
	// daemon makes), so deleting the reference does not matter.
	if err := os.MkdirAll(r.base, 0o755); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(r.base) })
	if err := os.Link(filepath.Join(dir, "initrd.cpio"), filepath.Join(r.base, "initrd.cpio")); err != nil {
		b.Fatal(err)
	}
	if st, raw := d.do("DELETE", "/instances/"+in.ID+"?graceful_shutdown=false", nil, nil); st != 204 {
		b.Fatalf("delete reference: %d %s", st, raw)
	}
	b.Logf("reference argv: %s", strings.Join(r.argv, " "))
	return r
}

// refTAP returns the TAP of a running instance, as stored in its metadata.
func refTAP(b *testing.B, d *daemon, id string) string {
	b.Helper()
	raw, err := os.ReadFile(filepath.Join(d.dataDir, "instances", id, "metadata.json"))
	if err != nil {
		b.Fatal(err)
	}
	var meta struct {
		Network struct {
			TAP string `json:"tap"`
		} `json:"network"`
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		b.Fatal(err)
	}
	return meta.Network.TAP
}

// qemuArgv reads the command line of the QEMU whose pid is in pidFile.
func qemuArgv(b *testing.B, pidFile string) []string {
	b.Helper()
	pid, err := os.ReadFile(pidFile)
	if err != nil {
		b.Fatal(err)
	}
	raw, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/cmdline")
	if err != nil {
		b.Fatal(err)
	}
	argv := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
	if len(argv) < 2 || !strings.Contains(argv[0], "qemu-system") {
		b.Fatalf("pid %s is not QEMU: %q", pid, argv)
	}
	return argv
}

// backingFile returns the backing file of a qcow2 image.
func backingFile(b *testing.B, path string) string {
	b.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", path).Output()
	if err != nil {
		b.Fatalf("qemu-img info %s: %v", path, err)
	}
	var info struct {
		Backing string `json:"full-backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.Backing == "" {
		b.Fatalf("qemu-img info %s: no backing file (%v): %s", path, err, out)
	}
	return info.Backing
}

// benchTAP makes a single-queue TAP (flags as the daemon's) for the bare
// boots, up but on no bridge, and removes it at the end.
func benchTAP(b *testing.B) string {
	b.Helper()
	name := "hmbench0"
	_ = exec.Command("ip", "link", "del", name).Run()
	for _, args := range [][]string{
		{"tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"},
		{"link", "set", name, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			b.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	b.Cleanup(func() { _ = exec.Command("ip", "link", "del", name).Run() })
	return name
}

// bareBoot is one bare QEMU boot.
type bareBoot struct {
	total  time.Duration // exec to program_start seen
	qmp    time.Duration // exec to the QMP greeting
	prep   time.Duration // making the scratch files (not in total)
	detect time.Duration // last write of events.log to program_start seen
}

func bootBare(b *testing.B, r bareRecipe, tap string, i int) bareBoot {
	b.Helper()
	dir := filepath.Join(r.base, fmt.Sprint(i))
	b.Cleanup(func() { os.RemoveAll(dir) })
	prepStart := time.Now()
	r.prepare(b, dir)
	prep := time.Since(prepStart)
	argv := r.rewrite(b, dir, tap)
	cmd := exec.Command(argv[0], argv[1:]...)
	logf, err := os.OpenFile(filepath.Join(dir, "logs", "vmm.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	exited := make(chan struct{})
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatalf("start bare QEMU: %v", err)
	}
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() { _ = cmd.Process.Kill(); <-exited }
	b.Cleanup(stop)
	res, err := watchBareBoot(start, dir, exited)
	stop()
	if err != nil {
		app, _ := os.ReadFile(filepath.Join(dir, "logs", "app.log"))
		vmm, _ := os.ReadFile(filepath.Join(dir, "logs", "vmm.log"))
		b.Fatalf("bare boot %d: %v\nargv: %q\nvmm log:\n%s\napp log:\n%s", i, err, argv, vmm, app)
	}
	_ = os.RemoveAll(dir)
	res.prep = prep
	return res
}

// watchBareBoot polls every benchPoll for the QMP greeting and for
// program_start in events.log, until the latter or a failure.
func watchBareBoot(start time.Time, dir string, exited <-chan struct{}) (bareBoot, error) {
	var res bareBoot
	deadline := time.After(benchBootTimeout)
	tick := time.NewTicker(benchPoll)
	defer tick.Stop()
	for {
		if res.qmp == 0 && qmpGreets(filepath.Join(dir, "qmp-0.sock")) {
			res.qmp = time.Since(start)
		}
		s, err := events.ParseFile(filepath.Join(dir, "events.log"))
		if err == nil && s.ProgramStarted {
			seen := time.Now()
			res.total = seen.Sub(start)
			res.detect = sinceModified(filepath.Join(dir, "events.log"), seen)
			return res, nil
		}
		select {
		case <-tick.C:
		case <-exited:
			return res, fmt.Errorf("QEMU exited before program_start")
		case <-deadline:
			return res, fmt.Errorf("no program_start within %s", benchBootTimeout)
		}
	}
}

// qmpGreets reports whether QEMU's monitor at path accepts a connection and
// sends its greeting, the moment the daemon's create considers QEMU up.
func qmpGreets(path string) bool {
	c, err := net.DialTimeout("unix", path, benchPoll)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.Contains(line, `"QMP"`)
}

// prepare makes fresh per-boot files in dir, of the kinds the daemon makes
// for an instance: a qcow2 overlay on the same ext4 template, the same
// config disk, an empty events file, a sparse memory file, the initramfs.
func (r bareRecipe) prepare(b *testing.B, dir string) {
	b.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		b.Fatal(err)
	}
	overlay := filepath.Join(dir, "overlay-0.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", r.template, overlay).CombinedOutput(); err != nil {
		b.Fatalf("qemu-img create: %v: %s", err, out)
	}
	files := map[string][]byte{"config.img": r.config, "events.log": nil}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	mem, err := os.OpenFile(filepath.Join(dir, "mem"), os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o600)
	if err == nil {
		err = mem.Truncate(r.memSize)
		mem.Close()
	}
	if err != nil {
		b.Fatal(err)
	}
	if err := os.Link(filepath.Join(r.base, "initrd.cpio"), filepath.Join(dir, "initrd.cpio")); err != nil {
		b.Fatal(err)
	}
}

// rewrite returns the reference argv with the instance dir replaced by dir
// and the reference TAP by tap. It fails if anything of the reference
// instance is left.
func (r bareRecipe) rewrite(b *testing.B, dir, tap string) []string {
	b.Helper()
	argv := slices.Clone(r.argv)
	for i, a := range argv {
		a = strings.ReplaceAll(a, r.instDir+"/", dir+"/")
		if r.tap != "" {
			a = strings.ReplaceAll(a, "ifname="+r.tap+",", "ifname="+tap+",")
		}
		argv[i] = a
	}
	for _, a := range argv {
		if strings.Contains(a, r.instDir) || (r.tap != "" && strings.Contains(a, r.tap)) {
			b.Fatalf("argument %q still names the reference instance", a)
		}
	}
	return argv
}

// reportBoots reports medians and the ratio, and prints every iteration.
func reportBoots(b *testing.B, api []apiBoot, bare []bareBoot) {
	b.Helper()
	var lines strings.Builder
	fmt.Fprintf(&lines, "\n%4s %9s %9s %9s %9s %9s %9s %9s %9s %7s", "iter", "api-ms", "post-ms", "create-ms",
		"detect-ms", "bare-ms", "qmp-ms", "prep-ms", "detect-ms", "ratio")
	var apiT, bareT, postT, createT, qmpT, prepT []time.Duration
	var ratios []float64
	for i := range api {
		a, r := api[i], bare[i]
		fmt.Fprintf(&lines, "\n%4d %9s %9s %9s %9s %9s %9s %9s %9s %7.3f", i, ms(a.total), ms(a.post), ms(a.create),
			ms(a.detect), ms(r.total), ms(r.qmp), ms(r.prep), ms(r.detect), float64(a.total)/float64(r.total))
		apiT, bareT = append(apiT, a.total), append(bareT, r.total)
		postT, createT = append(postT, a.post), append(createT, a.create)
		qmpT, prepT = append(qmpT, r.qmp), append(prepT, r.prep)
		ratios = append(ratios, float64(a.total)/float64(r.total))
	}
	// The table goes to stdout: the testing package cuts a benchmark's
	// log output after 10 lines.
	fmt.Printf("BenchmarkBoot: boots (API then bare, alternating):%s\n", lines.String())
	apiP50, bareP50 := median(apiT), median(bareT)
	b.Logf("%d pairs: api p50 %s ms, bare p50 %s ms, ratio %.3f", len(api), ms(apiP50), ms(bareP50),
		float64(apiP50)/float64(bareP50))
	b.ReportMetric(0, "ns/op") // a pair of boots per op: meaningless
	b.ReportMetric(msf(apiP50), "api-p50-ms")
	b.ReportMetric(msf(bareP50), "bare-p50-ms")
	b.ReportMetric(float64(apiP50)/float64(bareP50), "ratio-p50")
	b.ReportMetric(median(ratios), "pair-ratio-p50")
	b.ReportMetric(msf(median(postT)), "api-post-p50-ms")
	b.ReportMetric(msf(median(createT)), "api-create-p50-ms")
	b.ReportMetric(msf(median(qmpT)), "bare-qmp-p50-ms")
	b.ReportMetric(msf(median(prepT)), "bare-prep-p50-ms")
}

func median[T time.Duration | float64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", msf(d)) }
