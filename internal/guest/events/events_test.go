package events

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	code := 137
	stream := string(Marshal(Event{Type: TypeProgramStart, PID: 7})) +
		"{\"type\":\"exi" + "\n" + // torn line from a crash: skipped
		string(Marshal(Event{Type: TypeExit, ExitCode: &code, Signal: 9, Message: "killed by signal 9 (SIGKILL)"}))
	s, err := Parse(strings.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	if !s.ProgramStarted || s.Exit == nil || *s.Exit.ExitCode != 137 || s.Exit.Signal != 9 {
		t.Fatalf("summary = %+v", s)
	}
}

func TestParseEmpty(t *testing.T) {
	s, err := Parse(strings.NewReader(""))
	if err != nil || s.ProgramStarted || s.Exit != nil {
		t.Fatalf("got %+v, %v", s, err)
	}
}
