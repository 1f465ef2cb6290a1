package cli

import (
	"fmt"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"github.com/hypeman-vm/hypeman/internal/oapi"
	"github.com/hypeman-vm/hypeman/internal/registry"
)

func (a *app) pullCommand() *cobra.Command {
	var noWait bool
	cmd := &cobra.Command{
		Use:   "pull IMAGE",
		Short: "Pull an image from a registry and convert it for VMs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			resp, err := c.CreateImageWithResponse(ctx, oapi.CreateImageRequest{Name: args[0]})
			if err := check(resp, body(resp), err, 202); err != nil {
				return err
			}
			img := *resp.JSON202
			last := ""
			for !noWait && img.Status != oapi.ImageStatusReady {
				if img.Status == oapi.ImageStatusFailed {
					return fmt.Errorf("pull failed: %s", deref(img.Error))
				}
				if s := string(img.Status); s != last {
					fmt.Fprintf(a.errOut, "%s: %s\n", img.Name, s)
					last = s
				}
				time.Sleep(300 * time.Millisecond)
				g, err := c.GetImageWithResponse(ctx, img.Name+"@"+img.Digest)
				if err := check(g, body(g), err, 200); err != nil {
					return err
				}
				img = *g.JSON200
			}
			fmt.Fprintf(a.out, "%s@%s\n", img.Name, img.Digest)
			return nil
		},
	}
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the pull is queued")
	return cmd
}

func deref[T any](p *T) T {
	var zero T
	if p != nil {
		return *p
	}
	return zero
}

func (a *app) imagesCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "images",
		Short: "List images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.client()
			if err != nil {
				return err
			}
			resp, err := c.ListImagesWithResponse(cmd.Context(), &oapi.ListImagesParams{})
			if err := check(resp, body(resp), err, 200); err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(resp.JSON200)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDIGEST\tSTATUS\tSIZE")
			for _, img := range *resp.JSON200 {
				size := ""
				if img.SizeBytes != nil {
					size = fmt.Sprintf("%.1f MB", float64(*img.SizeBytes)/(1<<20))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", img.Name, shortDigest(img.Digest), img.Status, size)
			}
			return tw.Flush()
		},
	}
}

func shortDigest(d string) string {
	if h, ok := strings.CutPrefix(d, "sha256:"); ok && len(h) > 12 {
		return "sha256:" + h[:12]
	}
	return d
}

func (a *app) pushCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "push SOURCE TARGET",
		Short: "Push a docker-archive tarball or OCI layout dir to the server's registry",
		Long: "Push an image to hypeman's built-in registry, where it becomes an image.\n" +
			"SOURCE is a docker archive tarball (docker save) or an OCI image layout directory.\n" +
			"TARGET is a repository and tag such as demo:latest.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, base, err := a.client()
			if err != nil {
				return err
			}
			token, err := a.token()
			if err != nil {
				return err
			}
			u, err := url.Parse(base)
			if err != nil {
				return fmt.Errorf("HYPEMAN_BASE_URL: %w", err)
			}
			ref, err := name.ParseReference(u.Host+"/"+args[1], name.Insecure)
			if err != nil {
				return fmt.Errorf("target %q: %w", args[1], err)
			}
			digest, err := registry.Push(cmd.Context(), args[0], ref, token)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.out, "%s@%s\n", ref.Context().Name(), digest)
			return nil
		},
	}
}
