package boot

import (
	"fmt"
	"io"
	"io/fs"
)

// newcWriter writes a cpio archive in the "new ASCII" (newc) format, the
// one the kernel's initramfs unpacker reads: a 110-byte header of "070701"
// and thirteen 8-digit hex fields, the NUL-terminated name, padding to a
// multiple of 4, the data, padding to a multiple of 4; a final entry named
// "TRAILER!!!" ends the archive. Every entry gets mtime 0 and uid/gid 0 so
// that the archive depends only on its contents.
type newcWriter struct {
	w   io.Writer
	n   int64 // bytes written so far, for padding
	ino uint32
	err error
}

func newNewcWriter(w io.Writer) *newcWriter { return &newcWriter{w: w} }

// cpio mode bits for file types (from the cpio format, same as st_mode).
const (
	cpioDir  = 0o040000
	cpioReg  = 0o100000
	cpioChar = 0o020000
)

// Dir adds a directory.
func (c *newcWriter) Dir(name string, perm fs.FileMode) error {
	return c.entry(name, cpioDir|uint32(perm.Perm()), 2, 0, 0, nil)
}

// File adds a regular file with data.
func (c *newcWriter) File(name string, perm fs.FileMode, data []byte) error {
	return c.entry(name, cpioReg|uint32(perm.Perm()), 1, 0, 0, data)
}

// CharDev adds a character device node major:minor.
func (c *newcWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	return c.entry(name, cpioChar|uint32(perm.Perm()), 1, major, minor, nil)
}

// Close writes the trailer. It does not close the underlying writer.
func (c *newcWriter) Close() error {
	return c.entry("TRAILER!!!", 0, 1, 0, 0, nil)
}

func (c *newcWriter) entry(name string, mode, nlink, rmaj, rmin uint32, data []byte) error {
	if c.err != nil {
		return c.err
	}
	ino := uint32(0)
	if name != "TRAILER!!!" {
		c.ino++
		ino = c.ino
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad()
	c.write(data)
	c.pad()
	return c.err
}

func (c *newcWriter) write(b []byte) {
	if c.err != nil || len(b) == 0 {
		return
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
}

func (c *newcWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}
