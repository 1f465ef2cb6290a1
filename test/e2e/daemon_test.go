package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hypeman-vm/hypeman/internal/auth"
)

// daemon is one `hypeman serve` process under test.
type daemon struct {
	name    string
	dataDir string
	bridge  string
	subnet  string
	addr    string
	secret  string
	token   string
	logPath string

	mu  sync.Mutex
	cmd *exec.Cmd
	// extraEnv is added to the daemon's environment at its next start.
	extraEnv []string
	// exited is set when the running daemon process ended by itself.
	exited bool
}

// waitExit waits until the daemon process has ended by itself (a crash).
func (d *daemon) waitExit(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		d.mu.Lock()
		gone := d.exited
		d.mu.Unlock()
		if gone {
			d.mu.Lock()
			d.cmd, d.exited = nil, false
			d.mu.Unlock()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("daemon %s did not crash as planned\n%s", d.name, d.log())
}

var (
	daemonsMu sync.Mutex
	daemons   []*daemon
	nextNet   = 10
)

// newDaemon starts a daemon with its own data dir, bridge, subnet and port,
// so that several can run side by side in the test namespace.
func newDaemon(t testing.TB, name string) *daemon {
	t.Helper()
	d, err := startDaemon(name)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func startDaemon(name string) (*daemon, error) {
	daemonsMu.Lock()
	n := nextNet
	nextNet++
	daemonsMu.Unlock()
	dir, err := os.MkdirTemp(dataRoot(), "hme2e-"+name+"-")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), nil, 0o644); err != nil {
		return nil, err
	}
	d := &daemon{
		name: name, dataDir: dir, bridge: fmt.Sprintf("hmt%d", n),
		subnet: fmt.Sprintf("10.%d.0.0/16", 100+n), addr: freeAddr(),
		secret: fmt.Sprintf("e2e-secret-%d", n), logPath: filepath.Join(dir, "daemon.log"),
	}
	d.token, err = auth.Mint(d.secret, "e2e", time.Hour)
	if err != nil {
		return nil, err
	}
	daemonsMu.Lock()
	daemons = append(daemons, d)
	daemonsMu.Unlock()
	return d, d.launch()
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// env is the environment of the daemon and of CLI commands aimed at it.
func (d *daemon) env() []string {
	return append(os.Environ(),
		"HYPEMAN_CONFIG="+filepath.Join(d.dataDir, "config.yaml"), // no host config leaks in
		"HYPEMAN_DATA_DIR="+d.dataDir,
		"HYPEMAN_LISTEN="+d.addr,
		"HYPEMAN_JWT_SECRET="+d.secret,
		"HYPEMAN_BRIDGE="+d.bridge,
		"HYPEMAN_SUBNET="+d.subnet,
		"HYPEMAN_KERNEL="+os.Getenv(envKernel),
		"HYPEMAN_KERNEL_MODULES="+os.Getenv(envModules),
		"HYPEMAN_BASE_URL=http://"+d.addr,
		"HYPEMAN_API_KEY="+d.token,
	)
}

// start launches the daemon and waits until /health answers.
func (d *daemon) start(t testing.TB) {
	t.Helper()
	if err := d.launch(); err != nil {
		t.Fatal(err)
	}
}

func (d *daemon) launch() error {
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(os.Getenv(envBin), "serve", "--debug")
	cmd.Env = append(d.env(), d.extraEnv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	d.mu.Lock()
	d.cmd = cmd
	d.mu.Unlock()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			d.mu.Lock()
			d.cmd = nil
			d.mu.Unlock()
			return fmt.Errorf("daemon %s exited: %v\n%s", d.name, err, d.log())
		default:
		}
		if resp, err := http.Get("http://" + d.addr + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				go func() {
					<-exited
					d.mu.Lock()
					if d.cmd == cmd {
						d.exited = true
					}
					d.mu.Unlock()
				}()
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("daemon %s did not answer /health\n%s", d.name, d.log())
}

// kill ends the daemon with SIGKILL (VMs keep running).
func (d *daemon) kill() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd != nil && d.cmd.Process != nil {
		_ = d.cmd.Process.Kill()
		for i := 0; i < 100; i++ {
			if syscall.Kill(d.cmd.Process.Pid, 0) != nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		d.cmd = nil
	}
}

func (d *daemon) log() string {
	b, _ := os.ReadFile(d.logPath)
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// stopAllDaemons deletes every instance of every daemon (so no VM outlives
// the run), then ends the daemons.
func stopAllDaemons() {
	daemonsMu.Lock()
	defer daemonsMu.Unlock()
	for _, d := range daemons {
		d.deleteAll()
		d.kill()
		killQEMUs(d.dataDir)
		keepLog(d)
		_ = os.RemoveAll(d.dataDir)
	}
}

// keepLog copies the daemon's log into $HYPEMAN_E2E_KEEP_LOGS, when set,
// before its data dir goes (for reading debug logs after a run).
func keepLog(d *daemon) {
	dir := os.Getenv("HYPEMAN_E2E_KEEP_LOGS")
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err == nil {
		if b, err := os.ReadFile(d.logPath); err == nil {
			_ = os.WriteFile(filepath.Join(dir, d.name+".log"), b, 0o644)
		}
	}
}

func (d *daemon) deleteAll() {
	var list []map[string]any
	if st, _ := d.do("GET", "/instances", nil, &list); st != 200 {
		return
	}
	for _, in := range list {
		d.do("DELETE", fmt.Sprintf("/instances/%s?graceful_shutdown=false", in["id"]), nil, nil)
	}
}

// killQEMUs ends any QEMU whose command line mentions dir (a safety net).
func killQEMUs(dir string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), dir) {
			var pid int
			fmt.Sscan(e.Name(), &pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// do sends an authenticated JSON request and decodes a JSON response into
// out (when not nil). It returns the status and the raw body.
func (d *daemon) do(method, path string, body any, out any) (int, []byte) {
	return d.doToken(method, path, body, out, d.token)
}

func (d *daemon) doToken(method, path string, body any, out any, token string) (int, []byte) {
	var r io.Reader
	if body != nil {
		if s, ok := body.(string); ok {
			r = strings.NewReader(s)
		} else {
			b, _ := json.Marshal(body)
			r = bytes.NewReader(b)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+d.addr+path, r)
	if err != nil {
		return 0, []byte(err.Error())
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		_ = json.Unmarshal(b, out)
	}
	return resp.StatusCode, b
}

// cli runs bin/hypeman with args against this daemon.
func (d *daemon) cli(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Getenv(envBin), args...)
	cmd.Env = d.env()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("hypeman %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}
