package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/gorilla/websocket"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func (a *app) execCommand() *cobra.Command {
	var (
		opts execOptions
		env  []string
	)
	cmd := &cobra.Command{
		Use:   "exec [flags] INSTANCE COMMAND [ARG...]",
		Short: "Run a command in a running instance",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Command = args[1:]
			if opts.Command[0] == "--" { // exec NAME -- CMD...
				opts.Command = opts.Command[1:]
			}
			if len(opts.Command) == 0 {
				return fmt.Errorf("exec: no command to run in %s", args[0])
			}
			if len(env) > 0 {
				opts.Env = map[string]string{}
				for _, kv := range env {
					k, v, _ := strings.Cut(kv, "=")
					opts.Env[k] = v
				}
			}
			conn, err := a.dialWS(cmd.Context(), args[0], "exec")
			if err != nil {
				return err
			}
			defer conn.Close()
			code, err := a.runExec(cmd.Context(), conn, opts)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError(code)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false) // flags after INSTANCE belong to the command
	f.BoolVarP(&opts.Interactive, "interactive", "i", false, "keep stdin open and forward it")
	f.BoolVarP(&opts.TTY, "tty", "t", false, "allocate a terminal")
	f.StringArrayVarP(&env, "env", "e", nil, "set an environment variable (K=V)")
	f.StringVarP(&opts.Cwd, "workdir", "w", "", "working directory in the guest")
	f.IntVar(&opts.Timeout, "timeout", 0, "kill the command after this many seconds (0: no limit)")
	f.IntVar(&opts.WaitForAgent, "wait-for-agent", 0, "seconds to wait for the guest agent to answer")
	return cmd
}

// execOptions is the first message of an exec (hypeman-api.md 5.3) plus
// the client-side -i.
type execOptions struct {
	Command      []string          `json:"command"`
	TTY          bool              `json:"tty"`
	Env          map[string]string `json:"env,omitempty"`
	Cwd          string            `json:"cwd,omitempty"`
	Timeout      int               `json:"timeout,omitempty"`
	WaitForAgent int               `json:"wait_for_agent,omitempty"`
	Rows         int               `json:"rows,omitempty"`
	Cols         int               `json:"cols,omitempty"`
	Interactive  bool              `json:"-"`
}

// wsURL is the WebSocket address of /instances/{id}/{what}.
func wsURL(base, id, what string) (string, error) {
	u, err := url.Parse(strings.TrimRight(base, "/"))
	if err != nil {
		return "", fmt.Errorf("HYPEMAN_BASE_URL: %w", err)
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	}
	return u.String() + "/instances/" + url.PathEscape(id) + "/" + what, nil
}

// dialWS opens the exec or cp WebSocket of instance id. An error answer
// before the upgrade becomes its message.
func (a *app) dialWS(ctx context.Context, id, what string) (*websocket.Conn, error) {
	base := os.Getenv("HYPEMAN_BASE_URL")
	if base == "" {
		base = DefaultBaseURL
	}
	u, err := wsURL(base, id, what)
	if err != nil {
		return nil, err
	}
	token, err := a.token()
	if err != nil {
		return nil, err
	}
	conn, resp, err := websocket.DefaultDialer.DialContext(ctx, u, http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, instanceErr(id, httpError(resp))
		}
		return nil, err
	}
	return conn, nil
}

// wsWriter serializes writes to a WebSocket (stdin, resizes).
type wsWriter struct {
	mu   sync.Mutex // guards conn's write side
	conn *websocket.Conn
}

func (w *wsWriter) write(typ int, b []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.conn.WriteMessage(typ, b)
}

// runExec sends opts, forwards stdin (with -i) and terminal size changes
// (with -t), prints output, and returns the command's exit code.
func (a *app) runExec(ctx context.Context, conn *websocket.Conn, opts execOptions) (int, error) {
	stdinFD := int(os.Stdin.Fd())
	if opts.TTY && term.IsTerminal(stdinFD) {
		if cols, rows, err := term.GetSize(stdinFD); err == nil {
			opts.Cols, opts.Rows = cols, rows
		}
		if opts.Interactive {
			old, err := term.MakeRaw(stdinFD)
			if err != nil {
				return -1, err
			}
			defer term.Restore(stdinFD, old)
		}
		stop := watchResize(stdinFD, &wsWriter{conn: conn})
		defer stop()
	}
	var stdin io.Reader
	if opts.Interactive {
		stdin = os.Stdin
	}
	return execSession(ctx, conn, opts, stdin, a.out)
}

// execSession speaks the exec protocol on conn: the start message, stdin
// as BINARY frames (then our {"stdin_eof":true} extension, without a TTY:
// the protocol has no end of stdin otherwise, and `cat` would never end),
// output BINARY frames to out, until TEXT {"exitCode":N}.
func execSession(ctx context.Context, conn *websocket.Conn, opts execOptions, stdin io.Reader, out io.Writer) (int, error) {
	w := &wsWriter{conn: conn}
	start, _ := json.Marshal(opts)
	if err := w.write(websocket.TextMessage, start); err != nil {
		return -1, err
	}
	switch {
	case stdin != nil:
		go forwardStdin(w, stdin, !opts.TTY)
	case !opts.TTY:
		_ = w.write(websocket.TextMessage, []byte(`{"stdin_eof":true}`))
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			return -1, fmt.Errorf("exec: connection ended before the exit status: %w", err)
		}
		if typ == websocket.BinaryMessage {
			if _, err := out.Write(msg); err != nil {
				return -1, err
			}
			continue
		}
		var ctl struct {
			ExitCode *int   `json:"exitCode"`
			Error    string `json:"error"`
		}
		if json.Unmarshal(msg, &ctl) != nil {
			continue
		}
		if ctl.Error != "" {
			return -1, errors.New(ctl.Error)
		}
		if ctl.ExitCode != nil {
			return *ctl.ExitCode, nil
		}
	}
}

// forwardStdin sends r as BINARY frames; at EOF, sendEOF sends the end
// of stdin.
func forwardStdin(w *wsWriter, r io.Reader, sendEOF bool) {
	buf := make([]byte, 32*1024)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if w.write(websocket.BinaryMessage, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			if sendEOF {
				_ = w.write(websocket.TextMessage, []byte(`{"stdin_eof":true}`))
			}
			return
		}
	}
}

// watchResize sends a resize message whenever the terminal changes size.
func watchResize(fd int, w *wsWriter) (stop func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-sig:
				cols, rows, err := term.GetSize(fd)
				if err != nil {
					continue
				}
				msg := fmt.Appendf(nil, `{"resize":{"rows":%d,"cols":%d}}`, rows, cols)
				_ = w.write(websocket.TextMessage, msg)
			}
		}
	}()
	return func() { signal.Stop(sig); close(done) }
}
