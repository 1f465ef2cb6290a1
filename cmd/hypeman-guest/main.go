// Command hypeman-guest is the program hypeman puts in every VM's
// initramfs. As PID 1 it is the guest init (package initd).
package main

import (
	"fmt"
	"os"

	"github.com/hypeman-vm/hypeman/internal/guest/initd"
)

func main() {
	if os.Getpid() == 1 {
		initd.Main()
	}
	fmt.Fprintln(os.Stderr, "hypeman-guest: runs only as PID 1 inside a hypeman VM")
	os.Exit(2)
}
