// Command hypeman is the hypeman daemon (`hypeman serve`) and its CLI.
package main

import (
	"os"

	"github.com/hypeman-vm/hypeman/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
