package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hypeman-vm/hypeman/internal/oapi"
)

func (a *app) runCommand() *cobra.Command {
	var (
		name, memory, overlay, hv string
		env, entrypoint           []string
		vcpus                     int
		noNetwork, detach         bool
	)
	cmd := &cobra.Command{
		Use:   "run [flags] IMAGE [CMD...]",
		Short: "Create and start an instance from an image",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.client()
			if err != nil {
				return err
			}
			req := oapi.CreateInstanceRequest{Name: name, Image: args[0]}
			if name == "" {
				req.Name = defaultName(args[0])
			} else if err := checkName(name); err != nil {
				return err
			}
			if len(args) > 1 {
				req.Cmd = args[1:]
			}
			if len(entrypoint) > 0 {
				req.Entrypoint = entrypoint
			}
			if env != nil {
				req.Env = map[string]string{}
				for _, kv := range env {
					k, v, _ := strings.Cut(kv, "=")
					req.Env[k] = v
				}
			}
			if memory != "" {
				req.Size = &memory
			}
			if overlay != "" {
				req.OverlaySize = &overlay
			}
			if vcpus > 0 {
				req.Vcpus = &vcpus
			}
			if hv != "" {
				h := oapi.Hypervisor(hv)
				req.Hypervisor = &h
			}
			if noNetwork {
				f := false
				req.Network = &oapi.NetworkConfig{Enabled: &f}
			}
			ctx := cmd.Context()
			resp, err := c.CreateInstanceWithResponse(ctx, req)
			if err := check(resp, body(resp), err, 201); err != nil {
				return err
			}
			inst := resp.JSON201
			if !detach {
				if err := waitRunning(ctx, c, inst.Id, inst.Name); err != nil {
					return err
				}
			}
			fmt.Fprintln(a.out, inst.Id)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "instance name (default: derived from the image)")
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringArrayVar(&entrypoint, "entrypoint", nil, "override the image entrypoint (repeat for each argument)")
	f.StringVarP(&memory, "memory", "m", "", "memory size, e.g. 1GB")
	f.StringVar(&overlay, "overlay-size", "", "writable disk size, e.g. 10GB")
	f.IntVar(&vcpus, "vcpus", 0, "number of vCPUs")
	f.StringVar(&hv, "hypervisor", "", "hypervisor (default: the server's)")
	f.BoolVar(&noNetwork, "no-network", false, "start without a network interface")
	f.BoolVarP(&detach, "detach", "d", false, "return at once instead of waiting for Running")
	return cmd
}

// instanceName is what the API accepts as an instance name.
var instanceName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// checkName says in plain words why the API would refuse name (it
// answers with its schema's regular expression).
func checkName(name string) error {
	if len(name) > 63 || !instanceName.MatchString(name) {
		return fmt.Errorf("invalid instance name %q: use 1-63 lowercase letters, digits and dashes, not at either end", name)
	}
	return nil
}

// defaultName makes an instance name from an image reference:
// "127.0.0.1:4973/demo:latest" -> "demo-<random>".
func defaultName(image string) string {
	base := image
	if i := strings.LastIndex(base, "/"); i >= 0 {
		base = base[i+1:]
	}
	base, _, _ = strings.Cut(base, "@")
	base, _, _ = strings.Cut(base, ":")
	var b strings.Builder
	for _, r := range strings.ToLower(base) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteRune('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	if len(name) > 40 {
		name = name[:40]
	}
	if name == "" {
		name = "instance"
	}
	return fmt.Sprintf("%s-%04x", name, time.Now().UnixNano()&0xffff)
}

func (a *app) psCommand() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List instances (running ones; -a for all)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.client()
			if err != nil {
				return err
			}
			resp, err := c.ListInstancesWithResponse(cmd.Context(), &oapi.ListInstancesParams{})
			if err := check(resp, body(resp), err, 200); err != nil {
				return err
			}
			var list []oapi.Instance
			for _, in := range *resp.JSON200 {
				if all || in.State == oapi.InstanceStateRunning || in.State == oapi.InstanceStateInitializing {
					list = append(list, in)
				}
			}
			if a.output == "json" {
				if list == nil {
					list = []oapi.Instance{}
				}
				return a.printJSON(list)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tIMAGE\tSTATE\tIP\tCREATED")
			for _, in := range list {
				ip := ""
				if in.Network != nil && in.Network.Ip != nil {
					ip = *in.Network.Ip
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", in.Id[:12], in.Name, in.Image, in.State, ip,
					time.Since(in.CreatedAt).Round(time.Second))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "show all instances")
	return cmd
}

func (a *app) logsCommand() *cobra.Command {
	var follow bool
	var tail int
	var source string
	cmd := &cobra.Command{
		Use:   "logs [-f] INSTANCE",
		Short: "Show an instance's logs (app: the program's output; vmm; hypeman: operations)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.client()
			if err != nil {
				return err
			}
			src := oapi.GetInstanceLogsParamsSource(source)
			resp, err := c.GetInstanceLogs(cmd.Context(), args[0], &oapi.GetInstanceLogsParams{Tail: &tail, Follow: &follow, Source: &src})
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return instanceErr(args[0], httpError(resp))
			}
			return a.printSSE(resp)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new lines")
	f.IntVar(&tail, "tail", 100, "number of lines from the end to show")
	f.StringVar(&source, "source", "app", "log source: app, vmm or hypeman")
	return cmd
}

// printSSE prints each event's data, a JSON string, as one line.
func (a *app) printSSE(resp *http.Response) error {
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var line string
		if err := json.Unmarshal([]byte(data), &line); err != nil {
			line = data
		}
		fmt.Fprintln(a.out, line)
	}
	return sc.Err()
}

// instanceErr names the instance ref in an error whose message does not
// (the API's "resource not found" for an unknown instance), and turns the
// API's hint about from_running into the flag that sets it.
func instanceErr(ref string, err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "resource not found"):
		return fmt.Errorf("no instance named %q (or with that ID)%s", ref, strings.TrimPrefix(msg, "resource not found"))
	case strings.Contains(msg, "set from_running=true"):
		return errors.New(strings.Replace(msg, "set from_running=true", "add --from-running", 1))
	}
	return err
}

func httpError(resp *http.Response) error {
	var e struct{ Code, Message string }
	if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Message != "" {
		return fmt.Errorf("%s (%d %s)", e.Message, resp.StatusCode, e.Code)
	}
	return fmt.Errorf("unexpected status %d", resp.StatusCode)
}

func (a *app) stopCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "stop INSTANCE...",
		Short: "Stop instances gracefully",
		Args:  cobra.MinimumNArgs(1),
		RunE: a.eachInstance(func(ctx context.Context, c *oapi.ClientWithResponses, ref string) error {
			resp, err := c.StopInstanceWithResponse(ctx, ref)
			return check(resp, body(resp), err, 200)
		}),
	}
}

func (a *app) startCommand() *cobra.Command {
	var detach bool
	cmd := &cobra.Command{
		Use:   "start INSTANCE...",
		Short: "Start stopped instances (and wait until they run)",
		Args:  cobra.MinimumNArgs(1),
		RunE: a.eachInstance(func(ctx context.Context, c *oapi.ClientWithResponses, ref string) error {
			resp, err := c.StartInstanceWithResponse(ctx, ref, oapi.StartInstanceJSONRequestBody{})
			if err := check(resp, body(resp), err, 200); err != nil {
				return err
			}
			if detach {
				return nil
			}
			return waitRunning(ctx, c, resp.JSON200.Id, resp.JSON200.Name)
		}),
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return at once instead of waiting for Running")
	return cmd
}

// waitRunning waits until the instance runs (the program started and the
// guest agent answers), as docker run and start do.
func waitRunning(ctx context.Context, c *oapi.ClientWithResponses, id, name string) error {
	st := oapi.InstanceStateRunning
	timeout := "5m"
	w, err := c.WaitForInstanceStateWithResponse(ctx, id, &oapi.WaitForInstanceStateParams{State: st, Timeout: &timeout})
	if err := check(w, body(w), err, 200); err != nil {
		return err
	}
	if w.JSON200.State != st {
		return fmt.Errorf("instance %s is %s, not Running", name, w.JSON200.State)
	}
	return nil
}

func (a *app) rmCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [-f] INSTANCE...",
		Short: "Delete instances (-f also deletes running ones)",
		Args:  cobra.MinimumNArgs(1),
	}
	cmd.RunE = a.eachInstance(func(ctx context.Context, c *oapi.ClientWithResponses, ref string) error {
		if !force {
			g, err := c.GetInstanceWithResponse(ctx, ref)
			if err := check(g, body(g), err, 200); err != nil {
				return err
			}
			if st := g.JSON200.State; st != oapi.InstanceStateStopped && st != oapi.InstanceStateStandby && st != oapi.InstanceStateUnknown {
				return fmt.Errorf("instance %s is %s: stop it first or use rm -f", ref, st)
			}
		}
		resp, err := c.DeleteInstanceWithResponse(ctx, ref, &oapi.DeleteInstanceParams{})
		return check(resp, body(resp), err, 204)
	})
	cmd.Flags().BoolVarP(&force, "force", "f", false, "delete even if running")
	return cmd
}

// eachInstance runs fn for every argument, printing each one done, like
// docker does; it fails if any failed.
func (a *app) eachInstance(fn func(context.Context, *oapi.ClientWithResponses, string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, _, err := a.client()
		if err != nil {
			return err
		}
		failed := false
		for _, ref := range args {
			if err := fn(cmd.Context(), c, ref); err != nil {
				fmt.Fprintf(a.errOut, "hypeman: %s: %v\n", ref, err)
				failed = true
				continue
			}
			fmt.Fprintln(a.out, ref)
		}
		if failed {
			return exitError(1)
		}
		return nil
	}
}

func (a *app) inspectCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect INSTANCE|IMAGE",
		Short: "Show an instance (or else an image) as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.client()
			if err != nil {
				return err
			}
			resp, err := c.GetInstanceWithResponse(cmd.Context(), args[0])
			if err == nil && resp.StatusCode() == 200 {
				return a.printJSON(resp.JSON200)
			}
			img, err := c.GetImageWithResponse(cmd.Context(), args[0])
			if err := check(img, body(img), err, 200); err != nil {
				return fmt.Errorf("no instance or image %q: %w", args[0], err)
			}
			return a.printJSON(img.JSON200)
		},
	}
}

// body returns the raw body of a generated response (nil-safe).
func body(r any) []byte { return rawBody(r) }
