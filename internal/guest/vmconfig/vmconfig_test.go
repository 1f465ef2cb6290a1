package vmconfig

import (
	"reflect"
	"testing"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	in := Config{
		InstanceID: "abc", Hostname: "web", Entrypoint: []string{"/bin/sh", "-c"},
		Cmd: []string{"echo hi"}, Env: []string{"A=1"}, StopTimeoutSeconds: 5,
		Network: &Network{MAC: "02:00:00:00:00:01", IP: "10.0.0.2", PrefixLen: 24, Gateway: "10.0.0.1"},
	}
	disk, err := Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(disk)%512 != 0 {
		t.Fatalf("disk size %d not a multiple of 512", len(disk))
	}
	out, err := Decode(disk)
	if err != nil {
		t.Fatal(err)
	}
	in.SchemaVersion = SchemaVersion
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
	}
	if got := out.Argv(); !reflect.DeepEqual(got, []string{"/bin/sh", "-c", "echo hi"}) {
		t.Fatalf("argv = %q", got)
	}
}

func TestDecodeRejectsOtherSchema(t *testing.T) {
	if _, err := Decode([]byte(`{"schema_version":99}`)); err == nil {
		t.Fatal("want error for unknown schema version")
	}
}
