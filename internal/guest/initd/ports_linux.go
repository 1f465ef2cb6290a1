package initd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// openPort opens the virtio-serial port with the given name. A port can be
// opened only once in the guest, so callers keep the file for their lifetime.
func openPort(name string) (*os.File, error) {
	ents, err := os.ReadDir("/sys/class/virtio-ports")
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/sys/class/virtio-ports", e.Name(), "name"))
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		return os.OpenFile("/dev/"+e.Name(), os.O_RDWR, 0)
	}
	return nil, fmt.Errorf("no virtio-serial port named %q", name)
}
