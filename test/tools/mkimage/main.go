// Command mkimage writes a test OCI image as a docker-archive tarball (the
// format `docker save` writes and `hypeman push` and skopeo read):
//
//	go run ./test/tools/mkimage -kind busybox -o busybox.tar
//	go run ./test/tools/mkimage -kind debian -o nginx.tar -tag demo/nginx:latest
//
// Downloads and debootstrap results are cached in -cache.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/hypeman-vm/hypeman/internal/testimage"
)

func main() {
	kind := flag.String("kind", "busybox", "busybox or debian")
	out := flag.String("o", "", "output tarball (required)")
	tag := flag.String("tag", "", "image name recorded in the tarball (default hypeman/<kind>:latest)")
	cache := flag.String("cache", "/var/cache/hypeman-test", "cache directory for downloads and root file systems")
	mirror := flag.String("mirror", "", "Debian mirror (default: from apt sources)")
	include := flag.String("include", "nginx-light", "debian: comma-separated packages to add")
	flag.Parse()
	if *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *kind, *out, *tag, *cache, *mirror, *include); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, kind, out, tag, cache, mirror, include string) error {
	var img v1.Image
	var err error
	switch kind {
	case "busybox":
		img, err = testimage.Busybox(ctx, cache)
	case "debian":
		img, err = testimage.Debian(ctx, cache, mirror, strings.Split(include, ","))
	default:
		return fmt.Errorf("unknown -kind %q (busybox or debian)", kind)
	}
	if err != nil {
		return err
	}
	if tag == "" {
		tag = "hypeman/" + kind + ":latest"
	}
	t, err := name.NewTag(tag)
	if err != nil {
		return err
	}
	if err := tarball.WriteToFile(out, t, img); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s (%s, OCI manifest %s)\n", out, tag, d)
	return nil
}
