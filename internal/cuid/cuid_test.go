package cuid

import "testing"

func TestNewShapeAndUniqueness(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 10000; i++ {
		id := New()
		if !Valid(id) {
			t.Fatalf("invalid id %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
	if Valid("Abc") || Valid("1bcdefghijklmnopqrstuvwx") {
		t.Fatal("Valid accepted a bad id")
	}
}
