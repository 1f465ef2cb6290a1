package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/hypeman-vm/hypeman/internal/agent"
	"github.com/hypeman-vm/hypeman/internal/agent/proto"
	"github.com/hypeman-vm/hypeman/internal/guest/events"
	"github.com/hypeman-vm/hypeman/internal/guest/vmconfig"
	"github.com/hypeman-vm/hypeman/internal/hypervisor"
	"github.com/hypeman-vm/hypeman/internal/hypervisor/qemu"
	"github.com/hypeman-vm/hypeman/internal/storage"
)

// BenchmarkAgent measures the guest agent's channel three ways, side by
// side in one run: the raw virtio-serial port (no protocol), the agent
// protocol through the host client (internal/agent), and the API's exec
// and cp WebSockets through the daemon.
//
// Run (as root, after `make build`):
//
//	cd test/e2e && go test -run '^$' -bench BenchmarkAgent -benchtime 1x -count 1 .
//
// Setup (not timed): a daemon of the benchmark's own with the busybox demo
// image; one instance through the API (2 vCPUs, 1 GiB); one bare VM of the
// same image, kernel, initramfs and size, booted at the hypervisor layer
// without the daemon, with an extra virtio-serial port (vmconfig.PortBench)
// on which the guest agent moves raw bytes. Each b.Loop iteration is one
// round of every measurement; with -benchtime Nx the metrics are medians
// over N rounds.
//
//   - exec: 200 sequential calls of `true`, each from connect to the exit
//     code: through the API (a new WebSocket per call) on the instance, and
//     through agent.Client.Exec on the bare VM (the daemon holds the
//     instance's agent session, so the client path is measured there).
//   - cp: 100 MB of random data into /dev/shm (tmpfs: no disk in the way)
//     and back, through the API's cp WebSocket (32 KiB binary frames, as
//     the SDK sends) and through agent.Client CopyTo and CopyFrom. Every
//     upload is checked with sha256sum in the guest and every download
//     against the data sent.
//   - bench: 100 MB each way with the agent's bench call (protocol framing,
//     no files) and on the raw port.
//   - Variants that show where the time goes: CopyTo with 32 KiB reads (the
//     frame size the API's cp forwards), the API's cp with 256 KiB frames,
//     and raw uploads written 32 KiB at a time.
//
// No timing is asserted (the machine is noisy). An incomplete or corrupt
// transfer fails the benchmark.
func BenchmarkAgent(b *testing.B) {
	d, img := benchDaemon(b)
	data := benchPayload(b)
	id := benchInstance(b, d, img)
	vm := bootBenchVM(b, d, img)
	var rounds []agentRound
	for b.Loop() {
		rounds = append(rounds, agentBenchRound(b, d, id, vm, data))
	}
	reportAgent(b, rounds)
}

// benchBytes is the size of every transfer: 100 MB.
const benchBytes = 100_000_000

// benchExecs is the number of exec calls per path.
const benchExecs = 200

// benchGuestFile is where cp puts the data in the guest (a tmpfs).
const benchGuestFile = "/dev/shm/bench.bin"

// agentPayload is the data every cp moves, also kept in a host file.
type agentPayload struct {
	data []byte
	sum  string // hex sha256
	file string
}

func benchPayload(b *testing.B) agentPayload {
	b.Helper()
	p := agentPayload{data: make([]byte, benchBytes)}
	_, _ = rand.Read(p.data)
	p.sum = fmt.Sprintf("%x", sha256.Sum256(p.data))
	p.file = filepath.Join(b.TempDir(), "bench.bin")
	if err := os.WriteFile(p.file, p.data, 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// benchInstance creates a Running instance of img through the API.
func benchInstance(b *testing.B, d *daemon, img string) string {
	b.Helper()
	var in instance
	body := map[string]any{"name": "bench-agent", "image": img, "size": "1GB", "vcpus": 2}
	if st, raw := d.do("POST", "/instances", body, &in); st != 201 {
		b.Fatalf("create: %d %s\n%s", st, raw, d.log())
	}
	b.Cleanup(func() { d.do("DELETE", "/instances/"+in.ID+"?graceful_shutdown=false", nil, nil) })
	var w struct{ State string }
	if d.do("GET", "/instances/"+in.ID+"/wait?state=Running&timeout=3m", nil, &w); w.State != "Running" {
		b.Fatalf("instance not Running (%s)\n%s", w.State, d.log())
	}
	return in.ID
}

// benchVM is the bare VM: its agent client and raw port.
type benchVM struct {
	client    *agent.Client // replaced after the custom-session variants
	agentSock string
	raw       net.Conn
	meter     cpuMeter
}

// bootBenchVM boots the bare VM and connects to its agent and raw port.
func bootBenchVM(b *testing.B, d *daemon, img string) *benchVM {
	b.Helper()
	dir, err := os.MkdirTemp("/tmp", "hmbench-agent-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { killQEMUs(dir); os.RemoveAll(dir) })
	spec := benchVMSpec(b, d, img, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	qvm, err := qemu.New(qemu.Config{Accel: "tcg"}, nil).Start(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { qvm.Kill(); qvm.Wait(context.Background()) })
	waitAgentReady(b, filepath.Join(dir, "events.log"))
	c := agent.New(agent.UnixDialer(filepath.Join(dir, "agent.sock")), nil)
	if err := c.Ping(ctx); err != nil {
		b.Fatalf("agent: %v", err)
	}
	raw, err := net.Dial("unix", filepath.Join(dir, "bench.sock"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { raw.Close() })
	vm := &benchVM{client: c, agentSock: filepath.Join(dir, "agent.sock"), raw: raw}
	b.Cleanup(func() { vm.client.Close() })
	vm.meter = cpuMeter{qemuPID: pidFromFile(b, filepath.Join(dir, "qemu.pid")), guestStat: func() (string, error) {
		out, code, err := agentExec(vm.client, "cat", "/proc/stat")
		if err == nil && code != 0 {
			err = fmt.Errorf("cat /proc/stat: exit %d", code)
		}
		return out, err
	}}
	return vm
}

// benchVMSpec is the VM the daemon would make for the instance (same
// kernel, initramfs, root file system, disk kinds, command line, 2 vCPUs,
// 1 GiB), without a NIC, plus the raw bench port.
func benchVMSpec(b *testing.B, d *daemon, img, dir string) hypervisor.Spec {
	b.Helper()
	var im struct{ Digest string }
	if st, raw := d.do("GET", "/images/"+escapeRef(img), nil, &im); st != 200 {
		b.Fatalf("image: %d %s", st, raw)
	}
	rootfs := filepath.Join(d.dataDir, "images", "digests", strings.TrimPrefix(im.Digest, "sha256:"), "rootfs.erofs")
	initrds, _ := filepath.Glob(filepath.Join(d.dataDir, "system", "initrd", "*.cpio"))
	sort.Slice(initrds, func(i, j int) bool { return modTime(initrds[i]).After(modTime(initrds[j])) })
	if len(initrds) == 0 {
		b.Fatal("no initrd in the daemon's data dir")
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	if err := storage.New(p("templates")).CreateOverlay(context.Background(), p("overlay.qcow2"), 1<<30); err != nil {
		b.Fatal(err)
	}
	cfg, err := vmconfig.Encode(vmconfig.Config{
		InstanceID: "bench", Hostname: "bench", StopTimeoutSeconds: 1,
		Entrypoint: []string{"/bin/sh", "-c", "while true; do sleep 3600; done"},
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	})
	if err == nil {
		err = os.WriteFile(p("config.img"), cfg, 0o644)
	}
	if err == nil {
		err = storage.CreateMemoryFile(p("mem"), 1<<30)
	}
	if err == nil {
		err = os.WriteFile(p("events.log"), nil, 0o644)
	}
	if err != nil {
		b.Fatal(err)
	}
	return hypervisor.Spec{
		Name: "bench-agent", VCPUs: 2, MemoryBytes: 1 << 30, MemoryFile: p("mem"),
		Kernel: os.Getenv(envKernel), Initrd: initrds[0], Cmdline: "console=ttyS0 panic=-1 quiet loglevel=3",
		Disks: []hypervisor.Disk{
			{Path: rootfs, Format: hypervisor.FormatRaw, ReadOnly: true, Serial: vmconfig.SerialRootfs},
			{Path: p("overlay.qcow2"), Format: hypervisor.FormatQCOW2, Serial: vmconfig.SerialOverlay},
			{Path: p("config.img"), Format: hypervisor.FormatRaw, ReadOnly: true, Serial: vmconfig.SerialConfig},
		},
		ConsoleLog: p("console.log"),
		Ports: []hypervisor.Port{
			{Name: vmconfig.PortEvents, Kind: hypervisor.PortFile, Path: p("events.log")},
			{Name: vmconfig.PortAgent, Kind: hypervisor.PortSocket, Path: p("agent.sock")},
			{Name: vmconfig.PortBench, Kind: hypervisor.PortSocket, Path: p("bench.sock")},
		},
		ControlSocket: p("qmp.sock"), PIDFile: p("qemu.pid"), VMMLog: p("vmm.log"), Accel: "tcg",
	}
}

func waitAgentReady(b *testing.B, path string) {
	b.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if s, err := events.ParseFile(path); err == nil && s.ProgramStarted && s.AgentReady {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	raw, _ := os.ReadFile(path)
	b.Fatalf("bare VM: agent never ready:\n%s", raw)
}

// agentRound is one round of measurements. Rates are MB/s (10^6 bytes).
type agentRound struct {
	execAPI, execAgent []time.Duration
	rates              map[string]float64
	cpu                map[string]cpuUse
}

// Rate keys, in the order of the table.
const (
	rRawUp        = "raw-up"
	rRawDown      = "raw-down"
	rRawUp32K     = "raw-up-32k-writes"
	rRawFileUp    = "raw-file-up"
	rRawFileDown  = "raw-file-down"
	rBenchUp      = "agent-bench-up"
	rBenchDown    = "agent-bench-down"
	rAgentCpUp    = "cp-agent-up"
	rAgentCpDown  = "cp-agent-down"
	rAgentCpUp32K = "cp-agent-up-32k-frames"
	rAPICpUp      = "cp-api-up"
	rAPICpDown    = "cp-api-down"
	rAPICpUp256K  = "cp-api-up-256k-frames"
	rBenchUp32K   = "agent-bench-up-32k-frames"
	rBenchUp1M    = "agent-bench-up-1m-frames"
	rBenchDown4M  = "agent-bench-down-4m-window"
	rBenchUp2x    = "agent-bench-up-2-streams"
	rAgentCpUp2x  = "cp-agent-up-2-files"
	rGuestRead    = "guest-dd-read-tmpfs"
	rGuestWrite   = "guest-dd-write-tmpfs"
)

// Write and frame sizes.
const (
	benchFrame     = 32 << 10  // the SDK's cp frames, the guest's Data frames
	benchBigFrame  = 256 << 10 // agent.Client.CopyTo's buffer
	benchRawWrites = 1 << 20   // raw port writes and reads on the host
)

func agentBenchRound(b *testing.B, d *daemon, id string, vm *benchVM, p agentPayload) agentRound {
	b.Helper()
	r := agentRound{rates: map[string]float64{}, cpu: map[string]cpuUse{}}
	apiVM := apiMeter(b, d, id)
	up := func(key string, m cpuMeter, f func(w *stopwatch) time.Duration) {
		w := &stopwatch{b: b, m: m}
		r.rates[key] = mbps(f(w))
		r.cpu[key] = w.use
	}
	raw, ag := vm.raw, vm.client
	// Raw and API alternate, so drift of the machine's load hits both.
	up(rRawUp, vm.meter, func(w *stopwatch) time.Duration { return rawUpload(b, w, raw, p.data, benchRawWrites) })
	up(rAPICpUp, apiVM, func(w *stopwatch) time.Duration { return apiCpTo(b, w, d, id, p, benchFrame) })
	up(rRawDown, vm.meter, func(w *stopwatch) time.Duration { return rawDownload(b, w, raw, 'D') })
	up(rRawFileUp, vm.meter, func(w *stopwatch) time.Duration { return rawUploadOp(b, w, raw, p.data, benchRawWrites, 'F') })
	up(rRawFileDown, vm.meter, func(w *stopwatch) time.Duration { return rawDownload(b, w, raw, 'R') })
	up(rAPICpDown, apiVM, func(w *stopwatch) time.Duration { return apiCpFrom(b, w, d, id, p) })
	up(rBenchUp, vm.meter, func(w *stopwatch) time.Duration { return agentBench(b, w, ag, true) })
	up(rBenchDown, vm.meter, func(w *stopwatch) time.Duration { return agentBench(b, w, ag, false) })
	up(rAgentCpUp, vm.meter, func(w *stopwatch) time.Duration { return agentCpTo(b, w, ag, p, benchBigFrame) })
	up(rAgentCpDown, vm.meter, func(w *stopwatch) time.Duration { return agentCpFrom(b, w, ag, p) })
	up(rAgentCpUp32K, vm.meter, func(w *stopwatch) time.Duration { return agentCpTo(b, w, ag, p, benchFrame) })
	up(rAPICpUp256K, apiVM, func(w *stopwatch) time.Duration { return apiCpTo(b, w, d, id, p, benchBigFrame) })
	up(rRawUp32K, vm.meter, func(w *stopwatch) time.Duration { return rawUpload(b, w, raw, p.data, benchFrame) })
	up(rGuestRead, vm.meter, func(w *stopwatch) time.Duration {
		return guestDD(b, w, ag, "if="+benchGuestFile, "of=/dev/null")
	})
	up(rGuestWrite, vm.meter, func(w *stopwatch) time.Duration {
		return guestDD(b, w, ag, "if=/dev/zero", "of=/dev/shm/dd.bin", fmt.Sprintf("count=%d", benchBytes/benchFrame))
	})
	agentRun(b, vm.client, "rm", "-f", "/dev/shm/dd.bin")
	agentVariants(b, vm, p, up)
	r.execAPI = timeN(b, func() error { return apiExecTrue(d, id) })
	r.execAgent = timeN(b, func() error { return agentExecTrue(vm.client) })
	return r
}

// guestDD times a dd of 32 KiB blocks in the bare VM (one exec of about
// 30 ms included): what one pass over the data costs the guest.
func guestDD(b *testing.B, w *stopwatch, c *agent.Client, args ...string) time.Duration {
	b.Helper()
	w.start()
	agentRun(b, c, append([]string{"dd", "bs=32k"}, args...)...)
	return w.stop()
}

func mbps(d time.Duration) float64 { return benchBytes / 1e6 / d.Seconds() }

func timeN(b *testing.B, f func() error) []time.Duration {
	b.Helper()
	out := make([]time.Duration, 0, benchExecs)
	for i := 0; i < benchExecs; i++ {
		start := time.Now()
		if err := f(); err != nil {
			b.Fatalf("exec %d: %v", i, err)
		}
		out = append(out, time.Since(start))
	}
	return out
}

// rawUpload sends 'U', the length and data (written chunk bytes at a time)
// on the raw port and waits for the guest's 'K'.
func rawUpload(b *testing.B, w *stopwatch, c net.Conn, data []byte, chunk int) time.Duration {
	b.Helper()
	return rawUploadOp(b, w, c, data, chunk, 'U')
}

// rawUploadOp is rawUpload with the guest's operation: 'U' discards the
// data, 'F' writes it to a file in the guest's tmpfs.
func rawUploadOp(b *testing.B, w *stopwatch, c net.Conn, data []byte, chunk int, op byte) time.Duration {
	b.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	var hdr [9]byte
	hdr[0] = op
	binary.BigEndian.PutUint64(hdr[1:], uint64(len(data)))
	w.start()
	if _, err := c.Write(hdr[:]); err != nil {
		b.Fatalf("raw upload: %v", err)
	}
	for off := 0; off < len(data); off += chunk {
		if _, err := c.Write(data[off:min(off+chunk, len(data))]); err != nil {
			b.Fatalf("raw upload: %v", err)
		}
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil || ack[0] != 'K' {
		b.Fatalf("raw upload: answer %q, %v", ack[:], err)
	}
	return w.stop()
}

// rawDownload asks the guest for benchBytes on the raw port and reads
// them: op 'D' sends them from memory, 'R' from the file 'F' wrote.
func rawDownload(b *testing.B, w *stopwatch, c net.Conn, op byte) time.Duration {
	b.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	var hdr [9]byte
	hdr[0] = op
	binary.BigEndian.PutUint64(hdr[1:], benchBytes)
	buf := make([]byte, benchRawWrites)
	w.start()
	if _, err := c.Write(hdr[:]); err != nil {
		b.Fatalf("raw download: %v", err)
	}
	var n int64
	var err error
	for n < benchBytes && err == nil {
		var k int
		k, err = c.Read(buf[:min(int64(len(buf)), benchBytes-n)])
		n += int64(k)
	}
	took := w.stop()
	if n != benchBytes {
		b.Fatalf("raw download: %d of %d bytes: %v", n, benchBytes, err)
	}
	return took
}

// agentBench runs the agent's bench call one way.
func agentBench(b *testing.B, w *stopwatch, c *agent.Client, upload bool) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var err error
	w.start()
	if upload {
		_, err = c.BenchUpload(ctx, benchBytes)
	} else {
		_, err = c.BenchDownload(ctx, benchBytes)
	}
	took := w.stop()
	if err != nil {
		b.Fatalf("agent bench (upload %v): %v", upload, err)
	}
	return took
}

// chunkReader hands out at most n bytes per Read, which is the size of
// the Data frames agent.Client.CopyTo sends (up to its 256 KiB buffer).
type chunkReader struct {
	r io.Reader
	n int
}

func (c chunkReader) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

// agentCpTo copies the payload into the guest with Client.CopyTo, reading
// it chunk bytes at a time, and checks it there.
func agentCpTo(b *testing.B, w *stopwatch, c *agent.Client, p agentPayload, chunk int) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	agentRun(b, c, "rm", "-f", benchGuestFile)
	w.start()
	n, err := c.CopyTo(ctx, proto.CopyToRequest{Path: benchGuestFile, Mode: 0o644},
		chunkReader{r: bytes.NewReader(p.data), n: chunk})
	took := w.stop()
	if err != nil || n != benchBytes {
		b.Fatalf("agent cp to: %d of %d bytes: %v", n, benchBytes, err)
	}
	if out := agentRun(b, c, "sha256sum", benchGuestFile); !strings.HasPrefix(out, p.sum+" ") {
		b.Fatalf("agent cp to: guest sha256sum %q, want %s", out, p.sum)
	}
	return took
}

// agentCpFrom copies the guest file back with Client.CopyFrom and compares.
func agentCpFrom(b *testing.B, w *stopwatch, c *agent.Client, p agentPayload) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	got := bytes.NewBuffer(make([]byte, 0, benchBytes))
	w.start()
	err := c.CopyFrom(ctx, proto.CopyFromRequest{Path: benchGuestFile}, func(e proto.Entry, r io.Reader) error {
		_, err := got.ReadFrom(r)
		return err
	})
	took := w.stop()
	if err != nil || !bytes.Equal(got.Bytes(), p.data) {
		b.Fatalf("agent cp from: %d of %d bytes, equal %v: %v", got.Len(), benchBytes, bytes.Equal(got.Bytes(), p.data), err)
	}
	return took
}

// agentRun runs a command on the bare VM and returns its output; a non-zero
// exit fails the benchmark.
func agentRun(b *testing.B, c *agent.Client, cmd ...string) string {
	b.Helper()
	out, code, err := agentExec(c, cmd...)
	if err != nil || code != 0 {
		b.Fatalf("%v: exit %d: %v: %s", cmd, code, err, out)
	}
	return out
}

func agentExec(c *agent.Client, cmd ...string) (string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, err := c.Exec(ctx, proto.ExecRequest{Command: cmd})
	if err != nil {
		return "", -1, err
	}
	out, err := io.ReadAll(e.Output)
	if err != nil {
		return string(out), -1, err
	}
	code, err := e.Wait(ctx)
	return string(out), code, err
}

func agentExecTrue(c *agent.Client) error {
	if _, code, err := agentExec(c, "true"); err != nil || code != 0 {
		return fmt.Errorf("true: exit %d: %v", code, err)
	}
	return nil
}

// benchDialer has buffers as large as the server's.
var benchDialer = websocket.Dialer{ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10, HandshakeTimeout: time.Minute}

func dialWS(d *daemon, id, ep string) (*websocket.Conn, error) {
	h := http.Header{"Authorization": {"Bearer " + d.token}}
	conn, resp, err := benchDialer.Dial("ws://"+d.addr+"/instances/"+id+"/"+ep, h)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		return nil, fmt.Errorf("%s: %w (status %d)", ep, err, status)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Minute))
	return conn, nil
}

// apiExec runs cmd through the API's exec WebSocket: connect, request,
// read until the exit code.
func apiExec(d *daemon, id string, cmd ...string) (string, int, error) {
	conn, err := dialWS(d, id, "exec")
	if err != nil {
		return "", -1, err
	}
	defer conn.Close()
	req, _ := json.Marshal(map[string]any{"command": cmd})
	if err := conn.WriteMessage(websocket.TextMessage, req); err != nil {
		return "", -1, err
	}
	var out bytes.Buffer
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			return out.String(), -1, err
		}
		if typ == websocket.BinaryMessage {
			out.Write(msg)
			continue
		}
		var exit struct {
			ExitCode *int `json:"exitCode"`
		}
		if err := json.Unmarshal(msg, &exit); err != nil || exit.ExitCode == nil {
			return out.String(), -1, fmt.Errorf("unexpected TEXT frame %s", msg)
		}
		return out.String(), *exit.ExitCode, nil
	}
}

func apiExecTrue(d *daemon, id string) error {
	if out, code, err := apiExec(d, id, "true"); err != nil || code != 0 {
		return fmt.Errorf("true: exit %d: %v: %s", code, err, out)
	}
	return nil
}

// apiRun runs a command through the API and fails on a non-zero exit.
func apiRun(b *testing.B, d *daemon, id string, cmd ...string) string {
	b.Helper()
	out, code, err := apiExec(d, id, cmd...)
	if err != nil || code != 0 {
		b.Fatalf("%v: exit %d: %v: %s", cmd, code, err, out)
	}
	return out
}

// apiCpTo uploads the payload's file with the cp WebSocket in frames of
// frame bytes, then {"type":"end"}, and waits for the result; then checks
// the file in the guest.
func apiCpTo(b *testing.B, w *stopwatch, d *daemon, id string, p agentPayload, frame int) time.Duration {
	b.Helper()
	apiRun(b, d, id, "rm", "-f", benchGuestFile)
	w.start()
	res, err := apiCpToOnce(d, id, p.file, frame)
	took := w.stop()
	if err != nil || !res.Success || res.BytesWritten != benchBytes {
		b.Fatalf("api cp to: %+v: %v", res, err)
	}
	if out := apiRun(b, d, id, "sha256sum", benchGuestFile); !strings.HasPrefix(out, p.sum+" ") {
		b.Fatalf("api cp to: guest sha256sum %q, want %s", out, p.sum)
	}
	return took
}

type cpResultMsg struct {
	Type         string `json:"type"`
	Success      bool   `json:"success"`
	Error        string `json:"error"`
	BytesWritten int64  `json:"bytes_written"`
}

func apiCpToOnce(d *daemon, id, file string, frame int) (cpResultMsg, error) {
	var res cpResultMsg
	f, err := os.Open(file)
	if err != nil {
		return res, err
	}
	defer f.Close()
	conn, err := dialWS(d, id, "cp")
	if err != nil {
		return res, err
	}
	defer conn.Close()
	req, _ := json.Marshal(map[string]any{"direction": "to", "guest_path": benchGuestFile, "mode": 0o644})
	if err := conn.WriteMessage(websocket.TextMessage, req); err != nil {
		return res, err
	}
	buf := make([]byte, frame)
	for {
		n, rerr := io.ReadFull(f, buf)
		if n > 0 {
			if err := conn.WriteMessage(websocket.BinaryMessage, buf[:n]); err != nil {
				return res, err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return res, rerr
		}
	}
	if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"end"}`)); err != nil {
		return res, err
	}
	_, msg, err := conn.ReadMessage()
	if err != nil {
		return res, err
	}
	return res, json.Unmarshal(msg, &res)
}

// apiCpFrom downloads the guest file with the cp WebSocket and compares it
// with the payload.
func apiCpFrom(b *testing.B, w *stopwatch, d *daemon, id string, p agentPayload) time.Duration {
	b.Helper()
	got := make([]byte, 0, benchBytes)
	w.start()
	got, err := apiCpFromOnce(d, id, got)
	took := w.stop()
	if err != nil || !bytes.Equal(got, p.data) {
		b.Fatalf("api cp from: %d of %d bytes, equal %v: %v", len(got), benchBytes, bytes.Equal(got, p.data), err)
	}
	return took
}

// apiCpFromOnce appends the file's bytes to got, up to {"type":"end",
// "final":true}.
func apiCpFromOnce(d *daemon, id string, got []byte) ([]byte, error) {
	conn, err := dialWS(d, id, "cp")
	if err != nil {
		return got, err
	}
	defer conn.Close()
	req, _ := json.Marshal(map[string]any{"direction": "from", "guest_path": benchGuestFile})
	if err := conn.WriteMessage(websocket.TextMessage, req); err != nil {
		return got, err
	}
	headers := 0
	for {
		typ, r, err := conn.NextReader()
		if err != nil {
			return got, err
		}
		if typ == websocket.BinaryMessage {
			if got, err = appendFrom(got, r); err != nil {
				return got, err
			}
			continue
		}
		msg, err := io.ReadAll(r)
		if err != nil {
			return got, err
		}
		var m struct {
			Type    string `json:"type"`
			Final   bool   `json:"final"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(msg, &m); err != nil {
			return got, fmt.Errorf("bad TEXT frame %q: %w", msg, err)
		}
		switch {
		case m.Type == "header":
			headers++
		case m.Type == "end" && m.Final:
			if headers != 1 {
				return got, fmt.Errorf("%d entries, want 1", headers)
			}
			return got, nil
		case m.Type == "error":
			return got, fmt.Errorf("guest: %s", m.Message)
		}
	}
}

// appendFrom reads r to its end into got's spare capacity (no copy through
// an intermediate buffer).
func appendFrom(got []byte, r io.Reader) ([]byte, error) {
	for {
		if len(got) == cap(got) {
			got = slices.Grow(got, 1<<20)
		}
		n, err := r.Read(got[len(got):cap(got)])
		got = got[:len(got)+n]
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
	}
}

// reportAgent prints the table and reports the metrics (medians over
// rounds).
func reportAgent(b *testing.B, rounds []agentRound) {
	b.Helper()
	rate := func(key string) float64 {
		var xs []float64
		for _, r := range rounds {
			xs = append(xs, r.rates[key])
		}
		return median(xs)
	}
	var api, ag []time.Duration
	for _, r := range rounds {
		api, ag = append(api, r.execAPI...), append(ag, r.execAgent...)
	}
	var t strings.Builder
	fmt.Fprintf(&t, "\nBenchmarkAgent: %d round(s), %d MB per transfer, %d execs per path per round\n", len(rounds), benchBytes/1_000_000, benchExecs)
	fmt.Fprintf(&t, "raw = raw port, guest discards or sends from memory; raw-file = raw port, guest writes or reads %s\n", "a tmpfs file (the same transfer as cp)")
	fmt.Fprintf(&t, "%-28s %10s %10s %10s %10s %12s %12s\n", "path", "up-MB/s", "down-MB/s", "up/raw", "down/raw", "up/raw-file", "down/raw-file")
	rawUp, rawDown := rate(rRawUp), rate(rRawDown)
	fileUp, fileDown := rate(rRawFileUp), rate(rRawFileDown)
	row := func(name, upKey, downKey string) {
		u, dn := math.NaN(), math.NaN()
		if upKey != "" {
			u = rate(upKey)
		}
		if downKey != "" {
			dn = rate(downKey)
		}
		fmt.Fprintf(&t, "%-28s %10.1f %10.1f %10.2f %10.2f %12.2f %12.2f\n", name, u, dn, u/rawUp, dn/rawDown, u/fileUp, dn/fileDown)
	}
	row("raw virtio-serial", rRawUp, rRawDown)
	row("raw virtio-serial, file", rRawFileUp, rRawFileDown)
	row("agent bench call", rBenchUp, rBenchDown)
	row("agent CopyTo/CopyFrom", rAgentCpUp, rAgentCpDown)
	row("API cp WebSocket", rAPICpUp, rAPICpDown)
	row("  raw, 32 KiB writes", rRawUp32K, "")
	row("  CopyTo, 32 KiB frames", rAgentCpUp32K, "")
	row("  API cp, 256 KiB frames", rAPICpUp256K, "")
	row("  bench, 32 KiB frames", rBenchUp32K, "")
	row("  bench, 1 MiB frames", rBenchUp1M, "")
	row("  bench, 2 streams at once", rBenchUp2x, "")
	row("  CopyTo, 2 files at once", rAgentCpUp2x, "")
	row("  bench down, 4 MiB window", "", rBenchDown4M)
	fmt.Fprintf(&t, "%-28s %10s %10s %10s\n", "exec of true", "p50-ms", "p99-ms", "max-ms")
	fmt.Fprintf(&t, "%-28s %10.1f %10.1f %10.1f\n", "API WebSocket", msf(pct(api, 0.50)), msf(pct(api, 0.99)), msf(slices.Max(api)))
	fmt.Fprintf(&t, "%-28s %10.1f %10.1f %10.1f\n", "agent Client.Exec", msf(pct(ag, 0.50)), msf(pct(ag, 0.99)), msf(slices.Max(ag)))
	for i, r := range rounds {
		cpuTable(&t, i, r)
	}
	fmt.Print(t.String())

	b.ReportMetric(0, "ns/op")
	b.ReportMetric(msf(pct(api, 0.50)), "exec-api-p50-ms")
	b.ReportMetric(msf(pct(api, 0.99)), "exec-api-p99-ms")
	b.ReportMetric(msf(pct(ag, 0.50)), "exec-agent-p50-ms")
	b.ReportMetric(msf(pct(ag, 0.99)), "exec-agent-p99-ms")
	for _, key := range []string{rAPICpUp, rAPICpDown, rRawUp, rRawDown, rRawFileUp, rRawFileDown, rBenchUp, rBenchDown, rAgentCpUp, rAgentCpDown} {
		b.ReportMetric(rate(key), key+"-MBps")
	}
	b.ReportMetric(rate(rAPICpUp)/rawUp, "ratio-up")
	b.ReportMetric(rate(rAPICpDown)/rawDown, "ratio-down")
	b.ReportMetric(rate(rAPICpUp)/fileUp, "ratio-up-file")
	b.ReportMetric(rate(rAPICpDown)/fileDown, "ratio-down-file")
}

// cpuTable prints where one round's transfers spent CPU time (seconds;
// the guest has 2 vCPUs, so its user+sys+idle is about twice the wall).
func cpuTable(t *strings.Builder, round int, r agentRound) {
	fmt.Fprintf(t, "CPU seconds per transfer, round %d:\n%-27s %7s %7s %7s %7s %7s %7s %7s %7s\n", round,
		"transfer", "wall-s", "MB/s", "g-user", "g-sys", "g-idle", "qemu", "daemon", "bench")
	for _, key := range []string{rRawUp, rRawUp32K, rRawFileUp, rRawFileDown, rBenchUp, rBenchUp32K, rBenchUp1M, rBenchUp2x, rAgentCpUp,
		rAgentCpUp32K, rAgentCpUp2x, rAPICpUp, rAPICpUp256K, rRawDown, rBenchDown, rBenchDown4M, rAgentCpDown,
		rAPICpDown, rGuestRead, rGuestWrite} {
		c := r.cpu[key]
		fmt.Fprintf(t, "%-27s %7.2f %7.1f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f\n", key, c.wall, r.rates[key],
			c.guestUser, c.guestSys, c.guestIdle, c.qemu, c.daemon, c.self)
	}
}

// pct is the nearest-rank percentile p (0 < p <= 1) of xs.
func pct(xs []time.Duration, p float64) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(i, 0)]
}

// cpuMeter reads the CPU time a transfer costs: in the guest (from its
// /proc/stat), in its QEMU (vCPU threads apart from the others), in the
// daemon and in this process.
type cpuMeter struct {
	qemuPID   int
	daemonPID int // 0: no daemon on the path
	guestStat func() (string, error)
}

// cpuSnap is a reading of the meter's counters, in CPU seconds.
type cpuSnap struct {
	guestUser, guestSys, guestIdle float64
	qemu                           float64 // all threads: vCPUs and I/O
	daemon, self                   float64
}

// cpuUse is what one transfer cost, in CPU seconds, over wall seconds.
type cpuUse struct {
	wall float64
	cpuSnap
}

// clockTick is USER_HZ (100 on Linux, host and guest alike).
const clockTick = 100.0

// stopwatch times one transfer and meters its CPU time: start and stop
// read the meter (outside the timed span) around it.
type stopwatch struct {
	b      *testing.B
	m      cpuMeter
	before cpuSnap
	t0     time.Time
	use    cpuUse
}

func (w *stopwatch) start() {
	w.before = w.m.snap(w.b)
	w.t0 = time.Now()
}

func (w *stopwatch) stop() time.Duration {
	took := time.Since(w.t0)
	w.use = w.m.snap(w.b).since(w.before, took)
	return took
}

func (m cpuMeter) snap(b *testing.B) cpuSnap {
	b.Helper()
	var s cpuSnap
	if m.guestStat != nil {
		s.guestUser, s.guestSys, s.guestIdle = guestCPU(b, m.guestStat)
	} else {
		s.guestUser, s.guestSys, s.guestIdle = math.NaN(), math.NaN(), math.NaN()
	}
	s.qemu = procCPU(fmt.Sprintf("/proc/%d/stat", m.qemuPID))
	if m.daemonPID != 0 {
		s.daemon = procCPU(fmt.Sprintf("/proc/%d/stat", m.daemonPID))
	}
	s.self = procCPU("/proc/self/stat")
	return s
}

func (s cpuSnap) since(before cpuSnap, took time.Duration) cpuUse {
	return cpuUse{wall: took.Seconds(), cpuSnap: cpuSnap{
		guestUser: s.guestUser - before.guestUser, guestSys: s.guestSys - before.guestSys,
		guestIdle: s.guestIdle - before.guestIdle, qemu: s.qemu - before.qemu, daemon: s.daemon - before.daemon, self: s.self - before.self,
	}}
}

// guestCPU reads the guest's user, system and idle CPU seconds (all
// vCPUs) from its /proc/stat.
func guestCPU(b *testing.B, stat func() (string, error)) (user, sys, idle float64) {
	b.Helper()
	out, err := stat()
	if err != nil {
		b.Fatalf("guest /proc/stat: %v", err)
	}
	line, _, _ := strings.Cut(out, "\n")
	var f [8]float64 // user nice system idle iowait irq softirq steal
	if _, err := fmt.Sscan(strings.TrimPrefix(line, "cpu "), &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7]); err != nil {
		b.Fatalf("guest /proc/stat %q: %v", line, err)
	}
	return (f[0] + f[1]) / clockTick, (f[2] + f[5] + f[6]) / clockTick, (f[3] + f[4]) / clockTick
}

// procCPU returns utime+stime (seconds) of a process's /proc stat file.
func procCPU(path string) float64 {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	var ut, st float64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return (ut + st) / clockTick
}

func pidFromFile(b *testing.B, path string) int {
	b.Helper()
	raw, err := os.ReadFile(path)
	var pid int
	if err == nil {
		_, err = fmt.Sscan(strings.TrimSpace(string(raw)), &pid)
	}
	if err != nil {
		b.Fatalf("pid file %s: %v", path, err)
	}
	return pid
}

// newestMatch returns the most recently modified file matching pattern.
func newestMatch(b *testing.B, pattern string) string {
	b.Helper()
	files, _ := filepath.Glob(pattern)
	if len(files) == 0 {
		b.Fatalf("no file matches %s", pattern)
	}
	sort.Slice(files, func(i, j int) bool { return modTime(files[i]).After(modTime(files[j])) })
	return files[0]
}

// apiMeter meters the API instance: its QEMU, the daemon, its guest.
func apiMeter(b *testing.B, d *daemon, id string) cpuMeter {
	b.Helper()
	d.mu.Lock()
	dpid := d.cmd.Process.Pid
	d.mu.Unlock()
	return cpuMeter{
		qemuPID:   pidFromFile(b, newestMatch(b, filepath.Join(d.dataDir, "instances", id, "qemu*.pid"))),
		daemonPID: dpid,
		guestStat: func() (string, error) {
			out, code, err := apiExec(d, id, "cat", "/proc/stat")
			if err == nil && code != 0 {
				err = fmt.Errorf("cat /proc/stat: exit %d", code)
			}
			return out, err
		},
	}
}

// agentVariants measures changes that could make the agent path faster,
// without changing it: upload frame sizes and the host's receive window
// (on a session of our own, as agent.Client opens it but with other
// settings), and two streams at once (can the guest use both vCPUs?).
func agentVariants(b *testing.B, vm *benchVM, p agentPayload, up func(string, cpuMeter, func(*stopwatch) time.Duration)) {
	b.Helper()
	up(rBenchUp2x, vm.meter, func(w *stopwatch) time.Duration {
		w.start()
		err := parallel(2, func(int) error {
			_, err := vm.client.BenchUpload(context.Background(), benchBytes/2)
			return err
		})
		took := w.stop()
		if err != nil {
			b.Fatalf("2 bench uploads: %v", err)
		}
		return took
	})
	up(rAgentCpUp2x, vm.meter, func(w *stopwatch) time.Duration { return agentCpTo2(b, w, vm.client, p) })

	vm.client.Close() // the guest serves one session at a time
	noGuest := vm.meter
	noGuest.guestStat = nil // no exec without the client
	for _, v := range []struct {
		key    string
		upload bool
		frame  int
		window uint32
	}{
		{rBenchUp32K, true, benchFrame, 1 << 20},
		{rBenchUp1M, true, proto.MaxPayload, 1 << 20},
		{rBenchDown4M, false, 0, 4 << 20},
	} {
		sess := openAgentSession(b, vm.agentSock, v.window)
		up(v.key, noGuest, func(w *stopwatch) time.Duration { return sessionBench(b, w, sess, v.upload, v.frame) })
		sess.Close()
	}
	vm.client = agent.New(agent.UnixDialer(vm.agentSock), nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := vm.client.Ping(ctx); err != nil { // connect before the execs are timed
		b.Fatalf("agent after the session variants: %v", err)
	}
}

// parallel runs f(0..k-1) at once and returns their errors joined.
func parallel(k int, f func(i int) error) error {
	errs := make(chan error, k)
	for i := 0; i < k; i++ {
		go func() { errs <- f(i) }()
	}
	var all []error
	for i := 0; i < k; i++ {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// agentCpTo2 copies the two halves of the payload to two guest files at
// once, and checks both.
func agentCpTo2(b *testing.B, w *stopwatch, c *agent.Client, p agentPayload) time.Duration {
	b.Helper()
	half := [2][]byte{p.data[:benchBytes/2], p.data[benchBytes/2:]}
	name := func(i int) string { return fmt.Sprintf("/dev/shm/bench-%d.bin", i) }
	agentRun(b, c, "rm", "-f", benchGuestFile, name(0), name(1))
	w.start()
	err := parallel(2, func(i int) error {
		n, err := c.CopyTo(context.Background(), proto.CopyToRequest{Path: name(i), Mode: 0o644}, bytes.NewReader(half[i]))
		if err == nil && n != int64(len(half[i])) {
			err = fmt.Errorf("%d of %d bytes", n, len(half[i]))
		}
		return err
	})
	took := w.stop()
	if err != nil {
		b.Fatalf("2 agent cp to: %v", err)
	}
	out := agentRun(b, c, "sha256sum", name(0), name(1))
	for i := range half {
		if sum := fmt.Sprintf("%x", sha256.Sum256(half[i])); !strings.Contains(out, sum+"  "+name(i)) {
			b.Fatalf("2 agent cp to: guest sha256sum %q, want %s for %s", out, sum, name(i))
		}
	}
	agentRun(b, c, "rm", "-f", name(0), name(1))
	return took
}

// openAgentSession opens a session to the agent as agent.Client does
// (Hello with a fresh nonce, repeated until the matching Ack, then a yamux
// client), with a receive window of window bytes per stream.
func openAgentSession(b *testing.B, sock string, window uint32) *yamux.Session {
	b.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	hello, ack := append([]byte("HMA1h"), nonce...), append([]byte("HMA1a"), nonce...)
	r := bufio.NewReader(conn)
	var seen []byte
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		if _, err := conn.Write(hello); err != nil {
			b.Fatalf("hello: %v", err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		for {
			c, err := r.ReadByte()
			if err != nil {
				break // resend Hello
			}
			if seen = append(seen, c); len(seen) > len(ack) {
				seen = seen[1:]
			}
			if bytes.Equal(seen, ack) {
				_ = conn.SetDeadline(time.Time{})
				cfg := proto.SessionConfig()
				cfg.MaxStreamWindowSize = window
				sess, err := yamux.Client(readerConn{Conn: conn, r: r}, cfg)
				if err != nil {
					b.Fatal(err)
				}
				return sess
			}
		}
	}
	b.Fatal("agent session: no Ack")
	return nil
}

// readerConn reads through the handshake's buffer.
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// sessionBench runs the bench call on sess: an upload in Data frames of
// frame bytes, or a download.
func sessionBench(b *testing.B, w *stopwatch, sess *yamux.Session, upload bool, frame int) time.Duration {
	b.Helper()
	st, err := sess.OpenStream()
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	w.start()
	err = proto.WriteJSON(st, proto.TypeHeader, proto.Request{Method: proto.MethodBench,
		Bench: &proto.BenchRequest{Upload: upload, Bytes: benchBytes}})
	var n int64
	if err == nil && upload {
		chunk := make([]byte, frame)
		for ; n < benchBytes && err == nil; n += int64(len(chunk)) {
			err = proto.WriteMsg(st, proto.TypeData, chunk[:min(int64(len(chunk)), benchBytes-n)])
		}
		if err == nil {
			err = proto.ReadJSON(st, proto.TypeResult, nil)
		}
		n = min(n, benchBytes)
	}
	if err == nil && !upload {
		buf := make([]byte, proto.MaxPayload)
		for {
			typ, payload, rerr := proto.ReadMsg(st, buf)
			if err = rerr; err != nil || typ != proto.TypeData {
				break
			}
			n += int64(len(payload))
		}
	}
	took := w.stop()
	if err != nil || n != benchBytes {
		b.Fatalf("session bench (upload %v): %d of %d bytes: %v", upload, n, benchBytes, err)
	}
	return took
}
