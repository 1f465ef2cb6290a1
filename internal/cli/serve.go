package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hypeman-vm/hypeman/internal/auth"
	"github.com/hypeman-vm/hypeman/internal/config"
	"github.com/hypeman-vm/hypeman/internal/daemon"
)

func (a *app) serveCommand() *cobra.Command {
	var debug bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the hypeman API daemon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(a.configPath)
			if err != nil {
				return err
			}
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(a.errOut, &slog.HandlerOptions{Level: level}))
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			d, err := daemon.New(ctx, cfg, log)
			if err != nil {
				return err
			}
			defer d.Close()
			return d.Serve(ctx)
		},
	}
	cmd.Flags().BoolVar(&debug, "debug", false, "log at debug level")
	return cmd
}

func (a *app) setupCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "setup",
		Short: "Install the guest kernel and build the initramfs in the data dir",
		Long: "Downloads the Debian cloud kernel (apt-get download; needs Debian's archive)\n" +
			"and builds the initramfs with the guest init. The daemon does the same on\n" +
			"start; run this where the archive is reachable if the daemon is not.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(a.configPath)
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(a.errOut, nil))
			bf, err := daemon.Setup(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.out, "kernel %s\nvmlinuz %s\nmodules %s\ninitrd %s\n", bf.KernelVersion, bf.Kernel, bf.ModulesDir, bf.Initrd)
			return nil
		},
	}
}

func (a *app) tokenCommand() *cobra.Command {
	var subject string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint an API token (JWT) with the configured secret",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(a.configPath)
			if err != nil {
				return err
			}
			secret, err := cfg.ResolveSecret(true)
			if err != nil {
				return err
			}
			tok, err := auth.Mint(secret, subject, ttl)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.out, tok)
			return nil
		},
	}
	cmd.Flags().StringVar(&subject, "subject", "cli", "token subject (sub claim)")
	cmd.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token is valid")
	return cmd
}
