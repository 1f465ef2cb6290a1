// Package cli is the hypeman command line: `hypeman serve` runs the daemon,
// every other command is a client of the REST API (through the generated
// client in internal/oapi, the same surface the SDK sees), configured by
// HYPEMAN_BASE_URL and HYPEMAN_API_KEY. Results go to stdout, everything
// else to stderr; `-o json` prints stable JSON for scripts.
package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hypeman-vm/hypeman/internal/auth"
	"github.com/hypeman-vm/hypeman/internal/config"
	"github.com/hypeman-vm/hypeman/internal/oapi"
)

// DefaultBaseURL is the API address the client uses without HYPEMAN_BASE_URL.
const DefaultBaseURL = "http://localhost:4973"

type app struct {
	out, errOut io.Writer
	output      string // "table" or "json"
	configPath  string
}

// Main runs the CLI with args and returns the process exit code.
func Main(args []string) int {
	a := &app{out: os.Stdout, errOut: os.Stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		if ee, ok := err.(exitError); ok {
			return int(ee)
		}
		fmt.Fprintln(a.errOut, "hypeman:", err)
		return 1
	}
	return 0
}

// exitError makes the CLI exit with a status without printing more.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "hypeman",
		Short:         "Run OCI images as virtual machines",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVarP(&a.output, "output", "o", "table", "output format: table or json")
	root.PersistentFlags().StringVar(&a.configPath, "config", "", "config file (default $HYPEMAN_CONFIG or "+config.DefaultPath+")")
	root.AddCommand(a.serveCommand(), a.setupCommand(), a.tokenCommand(), a.runCommand(), a.psCommand(), a.logsCommand(),
		a.stopCommand(), a.startCommand(), a.rmCommand(), a.pullCommand(), a.imagesCommand(),
		a.pushCommand(), a.inspectCommand(), a.standbyCommand(), a.restoreCommand(), a.forkCommand(), a.snapshotCommand(), a.execCommand(), a.cpCommand())
	return root
}

// client returns an API client for HYPEMAN_BASE_URL with HYPEMAN_API_KEY.
// Without an API key, a root user on the daemon's host gets a short-lived
// token minted from the local secret.
func (a *app) client() (*oapi.ClientWithResponses, string, error) {
	base := os.Getenv("HYPEMAN_BASE_URL")
	if base == "" {
		base = DefaultBaseURL
	}
	token, err := a.token()
	if err != nil {
		return nil, "", err
	}
	c, err := oapi.NewClientWithResponses(strings.TrimRight(base, "/"),
		oapi.WithHTTPClient(&http.Client{}),
		oapi.WithRequestEditorFn(func(ctx context.Context, req *http.Request) error {
			req.Header.Set("Authorization", "Bearer "+token)
			return nil
		}))
	return c, base, err
}

func (a *app) token() (string, error) {
	if k := os.Getenv("HYPEMAN_API_KEY"); k != "" {
		return k, nil
	}
	cfg, err := config.Load(a.configPath)
	if err != nil {
		return "", err
	}
	secret, err := cfg.ResolveSecret(false)
	if err != nil {
		return "", fmt.Errorf("no HYPEMAN_API_KEY set and no local secret to mint one: %w", err)
	}
	return auth.Mint(secret, "cli", time.Hour)
}

// response is what every generated *Response has.
type response interface{ StatusCode() int }

// check returns an error describing resp unless its status is want.
func check(resp response, body []byte, err error, want int) error {
	if err != nil {
		return err
	}
	if v := reflect.ValueOf(resp); v.Kind() == reflect.Pointer && v.IsNil() {
		return fmt.Errorf("no response")
	}
	if resp.StatusCode() == want {
		return nil
	}
	var e struct{ Code, Message string }
	if json.Unmarshal(body, &e) == nil && e.Message != "" {
		return fmt.Errorf("%s (%d %s)", e.Message, resp.StatusCode(), e.Code)
	}
	return fmt.Errorf("unexpected status %d: %s", resp.StatusCode(), strings.TrimSpace(string(body)))
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
