package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// An empty qcow2 overlay is a few fixed structures, so it is written here
// instead of by a `qemu-img create` process (15-40 ms on these machines,
// far more under load, on the path of every create and fork). The layout
// is what qemu-img 7.2 writes for `create -f qcow2 -b B -F F` (version 3,
// 64 KiB clusters, 16-bit refcounts, no snapshots), without the optional
// feature-name table:
//
//	cluster 0  header, header extensions (backing format, end), backing name
//	cluster 1  refcount table: one entry, the block in cluster 2
//	cluster 2  refcount block: clusters 0 .. 2+l1Clusters have refcount 1
//	cluster 3  L1 table, all zero (nothing allocated: every read falls
//	           through to the backing file)
const (
	qcow2Magic        = 0x514649fb // "QFI\xfb"
	qcow2Version      = 3
	qcow2ClusterBits  = 16
	qcow2ClusterSize  = 1 << qcow2ClusterBits
	qcow2HeaderLength = 112 // version 3 header with the compression type byte
	qcow2RefcountOrd  = 4   // 16-bit refcounts
	qcow2ExtBackFmt   = 0xe2792aca
	qcow2ExtEnd       = 0
)

// writeQCOW2Overlay creates path as an empty qcow2 image of size bytes
// whose backing file is backing, in format backingFmt ("raw" or "qcow2").
// The file is synced before it is closed, as qemu-img's close does.
func writeQCOW2Overlay(path, backing, backingFmt string, size uint64) error {
	img, err := qcow2Overlay(backing, backingFmt, size)
	if err != nil {
		return fmt.Errorf("storage: qcow2 %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	_, err = f.Write(img)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("storage: write %s: %w", path, err)
	}
	return nil
}

// qcow2Overlay returns the bytes of an empty overlay (see writeQCOW2Overlay).
func qcow2Overlay(backing, backingFmt string, size uint64) ([]byte, error) {
	if size == 0 {
		return nil, errors.New("zero size")
	}
	const l2Entries = qcow2ClusterSize / 8
	l1Size := (size + qcow2ClusterSize*l2Entries - 1) / (qcow2ClusterSize * l2Entries)
	l1Clusters := (l1Size*8 + qcow2ClusterSize - 1) / qcow2ClusterSize
	clusters := 3 + l1Clusters
	if clusters > qcow2ClusterSize/2 {
		return nil, fmt.Errorf("size %d too large", size)
	}

	var ext []byte
	ext = appendExt(ext, qcow2ExtBackFmt, []byte(backingFmt))
	ext = appendExt(ext, qcow2ExtEnd, nil)
	backingOff := uint64(qcow2HeaderLength + len(ext))
	if backingOff+uint64(len(backing)) > qcow2ClusterSize || len(backing) > 1023 {
		return nil, fmt.Errorf("backing file name too long: %q", backing)
	}

	img := make([]byte, 3*qcow2ClusterSize+l1Size*8)
	be := binary.BigEndian
	h := img[:qcow2HeaderLength]
	be.PutUint32(h[0:], qcow2Magic)
	be.PutUint32(h[4:], qcow2Version)
	be.PutUint64(h[8:], backingOff)
	be.PutUint32(h[16:], uint32(len(backing)))
	be.PutUint32(h[20:], qcow2ClusterBits)
	be.PutUint64(h[24:], size)
	// 32: no encryption.
	be.PutUint32(h[36:], uint32(l1Size))
	be.PutUint64(h[40:], 3*qcow2ClusterSize) // L1 table
	be.PutUint64(h[48:], 1*qcow2ClusterSize) // refcount table
	be.PutUint32(h[56:], 1)                  // refcount table clusters
	// 60, 64: no snapshots; 72, 80, 88: no feature bits.
	be.PutUint32(h[96:], qcow2RefcountOrd)
	be.PutUint32(h[100:], qcow2HeaderLength)
	// 104: compression type zlib (0), then padding.
	copy(img[qcow2HeaderLength:], ext)
	copy(img[backingOff:], backing)

	be.PutUint64(img[1*qcow2ClusterSize:], 2*qcow2ClusterSize) // the refcount block
	block := img[2*qcow2ClusterSize : 3*qcow2ClusterSize]
	for c := uint64(0); c < clusters; c++ {
		be.PutUint16(block[2*c:], 1)
	}
	return img, nil
}

// appendExt appends a qcow2 header extension, its data padded to 8 bytes.
func appendExt(b []byte, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	return b
}

// qcow2Size returns the virtual size recorded in a qcow2 image's header.
func qcow2Size(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("storage: %w", err)
	}
	defer f.Close()
	var h [32]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return 0, fmt.Errorf("storage: read qcow2 header of %s: %w", path, err)
	}
	if binary.BigEndian.Uint32(h[0:]) != qcow2Magic {
		return 0, fmt.Errorf("storage: %s is not a qcow2 image", path)
	}
	return binary.BigEndian.Uint64(h[24:]), nil
}
