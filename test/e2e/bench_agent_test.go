package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
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
	client *agent.Client
	raw    net.Conn
}

// bootBenchVM boots the bare VM and connects to its agent and raw port.
func bootBenchVM(b *testing.B, d *daemon, img string) benchVM {
	b.Helper()
	dir, err := os.MkdirTemp("/tmp", "hmbench-agent-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { killQEMUs(dir); os.RemoveAll(dir) })
	spec := benchVMSpec(b, d, img, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := qemu.New(qemu.Config{Accel: "tcg"}, nil).Start(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { vm.Kill(); vm.Wait(context.Background()) })
	waitAgentReady(b, filepath.Join(dir, "events.log"))
	c := agent.New(agent.UnixDialer(filepath.Join(dir, "agent.sock")), nil)
	b.Cleanup(c.Close)
	if err := c.Ping(ctx); err != nil {
		b.Fatalf("agent: %v", err)
	}
	raw, err := net.Dial("unix", filepath.Join(dir, "bench.sock"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { raw.Close() })
	return benchVM{client: c, raw: raw}
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
}

// Rate keys, in the order of the table.
const (
	rRawUp        = "raw-up"
	rRawDown      = "raw-down"
	rRawUp32K     = "raw-up-32k-writes"
	rBenchUp      = "agent-bench-up"
	rBenchDown    = "agent-bench-down"
	rAgentCpUp    = "cp-agent-up"
	rAgentCpDown  = "cp-agent-down"
	rAgentCpUp32K = "cp-agent-up-32k-frames"
	rAPICpUp      = "cp-api-up"
	rAPICpDown    = "cp-api-down"
	rAPICpUp256K  = "cp-api-up-256k-frames"
)

// Write and frame sizes.
const (
	benchFrame     = 32 << 10  // the SDK's cp frames, the guest's Data frames
	benchBigFrame  = 256 << 10 // agent.Client.CopyTo's buffer
	benchRawWrites = 1 << 20   // raw port writes and reads on the host
)

func agentBenchRound(b *testing.B, d *daemon, id string, vm benchVM, p agentPayload) agentRound {
	b.Helper()
	r := agentRound{rates: map[string]float64{}}
	up := func(key string, f func() time.Duration) { r.rates[key] = mbps(f()) }
	// Raw and API alternate, so drift of the machine's load hits both.
	up(rRawUp, func() time.Duration { return rawUpload(b, vm.raw, p.data, benchRawWrites) })
	up(rAPICpUp, func() time.Duration { return apiCpTo(b, d, id, p, benchFrame) })
	up(rRawDown, func() time.Duration { return rawDownload(b, vm.raw) })
	up(rAPICpDown, func() time.Duration { return apiCpFrom(b, d, id, p) })
	up(rBenchUp, func() time.Duration { return agentBench(b, vm.client, true) })
	up(rBenchDown, func() time.Duration { return agentBench(b, vm.client, false) })
	up(rAgentCpUp, func() time.Duration { return agentCpTo(b, vm.client, p, benchBigFrame) })
	up(rAgentCpDown, func() time.Duration { return agentCpFrom(b, vm.client, p) })
	up(rAgentCpUp32K, func() time.Duration { return agentCpTo(b, vm.client, p, benchFrame) })
	up(rAPICpUp256K, func() time.Duration { return apiCpTo(b, d, id, p, benchBigFrame) })
	up(rRawUp32K, func() time.Duration { return rawUpload(b, vm.raw, p.data, benchFrame) })
	r.execAPI = timeN(b, func() error { return apiExecTrue(d, id) })
	r.execAgent = timeN(b, func() error { return agentExecTrue(vm.client) })
	return r
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
func rawUpload(b *testing.B, c net.Conn, data []byte, chunk int) time.Duration {
	b.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	var hdr [9]byte
	hdr[0] = 'U'
	binary.BigEndian.PutUint64(hdr[1:], uint64(len(data)))
	start := time.Now()
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
	return time.Since(start)
}

// rawDownload asks the guest for benchBytes on the raw port and reads them.
func rawDownload(b *testing.B, c net.Conn) time.Duration {
	b.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	var hdr [9]byte
	hdr[0] = 'D'
	binary.BigEndian.PutUint64(hdr[1:], benchBytes)
	buf := make([]byte, benchRawWrites)
	start := time.Now()
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
	took := time.Since(start)
	if n != benchBytes {
		b.Fatalf("raw download: %d of %d bytes: %v", n, benchBytes, err)
	}
	return took
}

// agentBench runs the agent's bench call one way.
func agentBench(b *testing.B, c *agent.Client, upload bool) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var took time.Duration
	var err error
	if upload {
		took, err = c.BenchUpload(ctx, benchBytes)
	} else {
		took, err = c.BenchDownload(ctx, benchBytes)
	}
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
func agentCpTo(b *testing.B, c *agent.Client, p agentPayload, chunk int) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	agentRun(b, c, "rm", "-f", benchGuestFile)
	start := time.Now()
	n, err := c.CopyTo(ctx, proto.CopyToRequest{Path: benchGuestFile, Mode: 0o644},
		chunkReader{r: bytes.NewReader(p.data), n: chunk})
	took := time.Since(start)
	if err != nil || n != benchBytes {
		b.Fatalf("agent cp to: %d of %d bytes: %v", n, benchBytes, err)
	}
	if out := agentRun(b, c, "sha256sum", benchGuestFile); !strings.HasPrefix(out, p.sum+" ") {
		b.Fatalf("agent cp to: guest sha256sum %q, want %s", out, p.sum)
	}
	return took
}

// agentCpFrom copies the guest file back with Client.CopyFrom and compares.
func agentCpFrom(b *testing.B, c *agent.Client, p agentPayload) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	got := bytes.NewBuffer(make([]byte, 0, benchBytes))
	start := time.Now()
	err := c.CopyFrom(ctx, proto.CopyFromRequest{Path: benchGuestFile}, func(e proto.Entry, r io.Reader) error {
		_, err := got.ReadFrom(r)
		return err
	})
	took := time.Since(start)
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
func apiCpTo(b *testing.B, d *daemon, id string, p agentPayload, frame int) time.Duration {
	b.Helper()
	apiRun(b, d, id, "rm", "-f", benchGuestFile)
	start := time.Now()
	res, err := apiCpToOnce(d, id, p.file, frame)
	took := time.Since(start)
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
func apiCpFrom(b *testing.B, d *daemon, id string, p agentPayload) time.Duration {
	b.Helper()
	got := make([]byte, 0, benchBytes)
	start := time.Now()
	got, err := apiCpFromOnce(d, id, got)
	took := time.Since(start)
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
	fmt.Fprintf(&t, "%-28s %10s %10s %10s %10s\n", "path", "up-MB/s", "down-MB/s", "up/raw", "down/raw")
	rawUp, rawDown := rate(rRawUp), rate(rRawDown)
	row := func(name, upKey, downKey string) {
		u, dn := rate(upKey), math.NaN()
		if downKey != "" {
			dn = rate(downKey)
		}
		fmt.Fprintf(&t, "%-28s %10.1f %10.1f %10.2f %10.2f\n", name, u, dn, u/rawUp, dn/rawDown)
	}
	row("raw virtio-serial", rRawUp, rRawDown)
	row("agent bench call", rBenchUp, rBenchDown)
	row("agent CopyTo/CopyFrom", rAgentCpUp, rAgentCpDown)
	row("API cp WebSocket", rAPICpUp, rAPICpDown)
	row("  raw, 32 KiB writes", rRawUp32K, "")
	row("  CopyTo, 32 KiB frames", rAgentCpUp32K, "")
	row("  API cp, 256 KiB frames", rAPICpUp256K, "")
	fmt.Fprintf(&t, "%-28s %10s %10s %10s\n", "exec of true", "p50-ms", "p99-ms", "max-ms")
	fmt.Fprintf(&t, "%-28s %10.1f %10.1f %10.1f\n", "API WebSocket", msf(pct(api, 0.50)), msf(pct(api, 0.99)), msf(slices.Max(api)))
	fmt.Fprintf(&t, "%-28s %10.1f %10.1f %10.1f\n", "agent Client.Exec", msf(pct(ag, 0.50)), msf(pct(ag, 0.99)), msf(slices.Max(ag)))
	fmt.Print(t.String())

	b.ReportMetric(0, "ns/op")
	b.ReportMetric(msf(pct(api, 0.50)), "exec-api-p50-ms")
	b.ReportMetric(msf(pct(api, 0.99)), "exec-api-p99-ms")
	b.ReportMetric(msf(pct(ag, 0.50)), "exec-agent-p50-ms")
	b.ReportMetric(msf(pct(ag, 0.99)), "exec-agent-p99-ms")
	for _, key := range []string{rAPICpUp, rAPICpDown, rRawUp, rRawDown, rBenchUp, rBenchDown, rAgentCpUp, rAgentCpDown} {
		b.ReportMetric(rate(key), key+"-MBps")
	}
	b.ReportMetric(rate(rAPICpUp)/rawUp, "ratio-up")
	b.ReportMetric(rate(rAPICpDown)/rawDown, "ratio-down")
}

// pct is the nearest-rank percentile p (0 < p <= 1) of xs.
func pct(xs []time.Duration, p float64) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(i, 0)]
}
