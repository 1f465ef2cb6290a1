// Command hypeman-guest is the program hypeman puts in every VM's
// initramfs. As PID 1 it is the guest init (package initd); started as
// "hypeman-agent" (by init) it is the guest agent (package agentd).
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/hypeman-vm/hypeman/internal/guest/agentd"
	"github.com/hypeman-vm/hypeman/internal/guest/initd"
)

func main() {
	switch {
	case os.Getpid() == 1:
		initd.Main()
	case filepath.Base(os.Args[0]) == initd.AgentName:
		agentd.Main()
	}
	fmt.Fprintln(os.Stderr, "hypeman-guest: runs only as PID 1 or as the agent inside a hypeman VM")
	os.Exit(2)
}
