// Package datasize parses and formats byte sizes the way the Hypeman API
// does: input such as "1GB", "512MB", "2G" or "100 kb" (case-insensitive,
// 1024-based), output such as "2.0 GB", "1024.0 MB" or "0 B" (one decimal,
// the largest unit the value strictly exceeds).
package datasize

import (
	"fmt"
	"strconv"
	"strings"
)

// Units.
const (
	B  int64 = 1
	KB       = 1 << 10
	MB       = 1 << 20
	GB       = 1 << 30
	TB       = 1 << 40
	PB       = 1 << 50
)

var suffixes = map[string]int64{
	"": B, "b": B, "k": KB, "kb": KB, "kib": KB, "m": MB, "mb": MB, "mib": MB,
	"g": GB, "gb": GB, "gib": GB, "t": TB, "tb": TB, "tib": TB, "p": PB, "pb": PB, "pib": PB,
}

// Parse parses a size such as "1GB" into bytes.
func Parse(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	num, err := strconv.ParseFloat(t[:i], 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	unit, ok := suffixes[strings.TrimSpace(t[i:])]
	if !ok {
		return 0, fmt.Errorf("invalid size %q: unknown unit", s)
	}
	v := num * float64(unit)
	if v > float64(1<<62) {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return int64(v), nil
}

// Format renders n bytes for humans, as the API does.
func Format(n int64) string {
	units := []struct {
		size int64
		name string
	}{{PB, "PB"}, {TB, "TB"}, {GB, "GB"}, {MB, "MB"}, {KB, "KB"}}
	for _, u := range units {
		if n > u.size {
			return fmt.Sprintf("%.1f %s", float64(n)/float64(u.size), u.name)
		}
	}
	return fmt.Sprintf("%d B", n)
}
