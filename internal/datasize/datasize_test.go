package datasize

import "testing"

func TestParse(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1GB", GB, true}, {"512MB", 512 * MB, true}, {"2G", 2 * GB, true},
		{"10gb", 10 * GB, true}, {"100 KB", 100 * KB, true}, {"4096", 4096, true},
		{"1.5GB", 3 * GB / 2, true}, {"", 0, false}, {"GB", 0, false}, {"12XB", 0, false}, {"-1GB", 0, false},
	}
	for _, c := range cases {
		got, err := Parse(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("Parse(%q) = %d, %v; want %d ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestFormat(t *testing.T) {
	cases := map[int64]string{
		0: "0 B", 2 * GB: "2.0 GB", 10 * GB: "10.0 GB", 512 * MB: "512.0 MB", GB: "1024.0 MB", 1536: "1.5 KB",
	}
	for in, want := range cases {
		if got := Format(in); got != want {
			t.Errorf("Format(%d) = %q, want %q", in, got, want)
		}
	}
}
