// Package cuid makes collision-resistant IDs in the CUID2 shape the API uses:
// 24 characters, lowercase letters and digits, starting with a letter. The
// body is a SHA3 hash of time, a process counter, a host fingerprint and
// random bytes, so IDs are unguessable and do not leak creation order.
package cuid

import (
	"crypto/rand"
	"crypto/sha3"
	"encoding/binary"
	"math/big"
	"os"
	"sync/atomic"
	"time"
)

// Length of an ID.
const Length = 24

var counter atomic.Uint64

// New returns a new ID.
func New() string {
	var seed [64]byte
	_, _ = rand.Read(seed[:32])
	binary.LittleEndian.PutUint64(seed[32:], uint64(time.Now().UnixNano()))
	binary.LittleEndian.PutUint64(seed[40:], counter.Add(1))
	binary.LittleEndian.PutUint64(seed[48:], uint64(os.Getpid()))
	sum := sha3.Sum512(seed[:])
	body := new(big.Int).SetBytes(sum[:]).Text(36)
	var first [1]byte
	_, _ = rand.Read(first[:])
	return string(rune('a'+int(first[0])%26)) + body[:Length-1]
}

// Valid reports whether s has the shape of an ID.
func Valid(s string) bool {
	if len(s) != Length || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
