package initd

import (
	"os"

	"github.com/hypeman-vm/hypeman/internal/guest/guestos"
)

// openPort opens the virtio-serial port with the given name, blocking:
// init writes whole lines and can wait.
func openPort(name string) (*os.File, error) { return guestos.OpenPort(name, false) }
