package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hypeman-vm/hypeman/internal/oapi"
)

func (a *app) standbyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "standby INSTANCE...",
		Short: "Put running instances in standby (memory snapshot, no VM process)",
		Args:  cobra.MinimumNArgs(1),
		RunE: a.eachInstance(func(ctx context.Context, c *oapi.ClientWithResponses, ref string) error {
			resp, err := c.StandbyInstanceWithResponse(ctx, ref, oapi.StandbyInstanceJSONRequestBody{})
			return check(resp, body(resp), err, 200)
		}),
	}
}

func (a *app) restoreCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "restore INSTANCE...",
		Short: "Resume instances from standby",
		Args:  cobra.MinimumNArgs(1),
		RunE: a.eachInstance(func(ctx context.Context, c *oapi.ClientWithResponses, ref string) error {
			resp, err := c.RestoreInstanceWithResponse(ctx, ref)
			return check(resp, body(resp), err, 200)
		}),
	}
}

func (a *app) forkCommand() *cobra.Command {
	var fromRunning bool
	var target string
	cmd := &cobra.Command{
		Use:   "fork [--from-running] [--target-state S] SOURCE NAME",
		Short: "Clone an instance (Stopped, Standby, or Running with --from-running) into a new one",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.client()
			if err != nil {
				return err
			}
			if err := checkName(args[1]); err != nil {
				return err
			}
			req := oapi.ForkInstanceRequest{Name: args[1], FromRunning: &fromRunning}
			if target != "" {
				ts := oapi.TargetState(target)
				req.TargetState = &ts
			}
			resp, err := c.ForkInstanceWithResponse(cmd.Context(), args[0], req)
			if err := check(resp, body(resp), err, 201); err != nil {
				return instanceErr(args[0], err)
			}
			return a.printSettled(cmd.Context(), c, resp.JSON201)
		},
	}
	cmd.Flags().BoolVar(&fromRunning, "from-running", false, "allow forking a Running source (it keeps running)")
	cmd.Flags().StringVar(&target, "target-state", "", "Stopped, Standby or Running (default: the source's state)")
	return cmd
}

// printSettled prints an instance a fork or restore made, once it runs if
// it is still booting (a fork of a Stopped source, an instance made from a
// disk-only snapshot), as run and start do.
func (a *app) printSettled(ctx context.Context, c *oapi.ClientWithResponses, in *oapi.Instance) error {
	if in != nil && in.State == oapi.InstanceStateInitializing {
		if err := waitRunning(ctx, c, in.Id, in.Name); err != nil {
			return err
		}
		g, err := c.GetInstanceWithResponse(ctx, in.Id)
		if err := check(g, body(g), err, 200); err != nil {
			return err
		}
		in = g.JSON200
	}
	return a.printInstanceLine(in)
}

// printInstanceLine prints an instance as JSON (-o json) or its ID and state.
func (a *app) printInstanceLine(in *oapi.Instance) error {
	if a.output == "json" {
		return a.printJSON(in)
	}
	ip := ""
	if in.Network != nil && in.Network.Ip != nil {
		ip = *in.Network.Ip
	}
	fmt.Fprintf(a.out, "%s %s %s %s\n", in.Id, in.Name, in.State, ip)
	return nil
}

func (a *app) snapshotCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Short: "Stored snapshots: create, ls, rm, restore, fork"}
	var kind, name, target string
	create := &cobra.Command{
		Use:   "create [--kind Standby|Stopped] [--name N] INSTANCE",
		Short: "Store a snapshot of an instance (Standby: memory and disk, from Running or Standby; Stopped: disk)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.client()
			if err != nil {
				return err
			}
			req := oapi.CreateSnapshotRequest{Kind: oapi.SnapshotKind(kind)}
			if name != "" {
				req.Name = &name
			}
			resp, err := c.CreateInstanceSnapshotWithResponse(cmd.Context(), args[0], req)
			if err := check(resp, body(resp), err, 201); err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(resp.JSON201)
			}
			fmt.Fprintln(a.out, resp.JSON201.Id)
			return nil
		},
	}
	create.Flags().StringVar(&kind, "kind", "Standby", "Standby or Stopped")
	create.Flags().StringVar(&name, "name", "", "snapshot name (unique per instance)")
	ls := &cobra.Command{
		Use:   "ls [INSTANCE]",
		Short: "List snapshots (of one instance when given)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.client()
			if err != nil {
				return err
			}
			params := &oapi.ListSnapshotsParams{}
			if len(args) == 1 {
				g, err := c.GetInstanceWithResponse(cmd.Context(), args[0])
				if err := check(g, body(g), err, 200); err != nil {
					return err
				}
				params.SourceInstanceId = &g.JSON200.Id
			}
			resp, err := c.ListSnapshotsWithResponse(cmd.Context(), params)
			if err := check(resp, body(resp), err, 200); err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(resp.JSON200)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tKIND\tSOURCE\tSIZE\tCREATED")
			for _, s := range *resp.JSON200 {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f MB\t%s\n", s.Id, deref(s.Name), s.Kind, s.SourceInstanceName,
					float64(s.SizeBytes)/(1<<20), time.Since(s.CreatedAt).Round(time.Second))
			}
			return tw.Flush()
		},
	}
	rm := &cobra.Command{
		Use:   "rm SNAPSHOT...",
		Short: "Delete snapshots",
		Args:  cobra.MinimumNArgs(1),
		RunE: a.eachInstance(func(ctx context.Context, c *oapi.ClientWithResponses, ref string) error {
			id, err := resolveSnapshot(ctx, c, ref, "")
			if err != nil {
				return err
			}
			resp, err := c.DeleteSnapshotWithResponse(ctx, id)
			return check(resp, body(resp), err, 204)
		}),
	}
	restore := &cobra.Command{
		Use:   "restore [--target-state S] INSTANCE SNAPSHOT",
		Short: "Put an instance back to one of its snapshots, in place",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.client()
			if err != nil {
				return err
			}
			req := oapi.RestoreSnapshotRequest{}
			if target != "" {
				ts := oapi.TargetState(target)
				req.TargetState = &ts
			}
			g, err := c.GetInstanceWithResponse(cmd.Context(), args[0])
			if err := check(g, body(g), err, 200); err != nil {
				return err
			}
			sid, err := resolveSnapshot(cmd.Context(), c, args[1], g.JSON200.Id)
			if err != nil {
				return err
			}
			resp, err := c.RestoreInstanceSnapshotWithResponse(cmd.Context(), args[0], sid, req)
			if err := check(resp, body(resp), err, 200); err != nil {
				return err
			}
			return a.printSettled(cmd.Context(), c, resp.JSON200)
		},
	}
	restore.Flags().StringVar(&target, "target-state", "", "Stopped, Standby or Running (default by kind)")
	fork := &cobra.Command{
		Use:   "fork [--target-state S] SNAPSHOT NAME",
		Short: "Make a new instance from a snapshot",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.client()
			if err != nil {
				return err
			}
			if err := checkName(args[1]); err != nil {
				return err
			}
			req := oapi.ForkSnapshotRequest{Name: args[1]}
			if target != "" {
				ts := oapi.TargetState(target)
				req.TargetState = &ts
			}
			sid, err := resolveSnapshot(cmd.Context(), c, args[0], "")
			if err != nil {
				return err
			}
			resp, err := c.ForkSnapshotWithResponse(cmd.Context(), sid, req)
			if err := check(resp, body(resp), err, 201); err != nil {
				return err
			}
			return a.printSettled(cmd.Context(), c, resp.JSON201)
		},
	}
	fork.Flags().StringVar(&target, "target-state", "", "Stopped, Standby or Running (default by kind)")
	cmd.AddCommand(create, ls, rm, restore, fork)
	return cmd
}

// resolveSnapshot turns what a user typed into a snapshot ID: an ID, or
// else a snapshot name (of the instance source when given; names are
// unique per instance, so a name several instances use must be given
// with its instance or as an ID).
func resolveSnapshot(ctx context.Context, c *oapi.ClientWithResponses, ref, source string) (string, error) {
	g, err := c.GetSnapshotWithResponse(ctx, ref)
	if err == nil && g.StatusCode() == 200 && (source == "" || g.JSON200.SourceInstanceId == source) {
		return g.JSON200.Id, nil
	}
	params := &oapi.ListSnapshotsParams{Name: &ref}
	if source != "" {
		params.SourceInstanceId = &source
	}
	l, err := c.ListSnapshotsWithResponse(ctx, params)
	if err := check(l, body(l), err, 200); err != nil {
		return "", err
	}
	switch snaps := *l.JSON200; len(snaps) {
	case 1:
		return snaps[0].Id, nil
	case 0:
		if source != "" {
			return "", fmt.Errorf("instance has no snapshot with ID or name %q", ref)
		}
		return "", fmt.Errorf("no snapshot with ID or name %q", ref)
	default:
		var from []string
		for _, s := range snaps {
			from = append(from, s.SourceInstanceName)
		}
		return "", fmt.Errorf("several snapshots are named %q (of %s): give its ID", ref, strings.Join(from, ", "))
	}
}
