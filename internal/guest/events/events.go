// Package events is the record format of the guest events port: one JSON
// object per line, written by the guest init and appended by QEMU to the
// instance's events.log on the host. The host reads the file to learn boot
// markers and the program's exit status, even when the daemon was down when
// they happened.
package events

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// Event types.
const (
	// TypeProgramStart: the program was started (Initializing -> Running).
	TypeProgramStart = "program_start"
	// TypeAgentReady: the guest agent listens on its port.
	TypeAgentReady = "agent_ready"
	// TypeExit: the program ended; ExitCode and Message are set.
	TypeExit = "exit"
	// TypeBootFailed: init could not start the program; Message says why.
	TypeBootFailed = "boot_failed"
)

// Event is one record.
type Event struct {
	Type string `json:"type"`
	// Time is the guest's clock when the event happened (RFC 3339).
	Time time.Time `json:"time"`
	// PID of the program (program_start).
	PID int `json:"pid,omitempty"`
	// ExitCode is set for exit and boot_failed.
	ExitCode *int `json:"exit_code,omitempty"`
	// Signal is the signal number that ended the program, 0 if none.
	Signal int `json:"signal,omitempty"`
	// Message is human readable: "exited with code 3", "killed by signal 9 (SIGKILL)".
	Message string `json:"message,omitempty"`
}

// Marshal returns e as one line of JSON ending in '\n'.
func Marshal(e Event) []byte {
	b, _ := json.Marshal(e)
	return append(b, '\n')
}

// Summary is what the host derives from an events stream.
type Summary struct {
	ProgramStarted bool
	AgentReady     bool
	// Exit is the last exit or boot_failed event, nil while the program runs.
	Exit *Event
}

// Parse reads an events stream. Lines that are not valid events (for example
// a line cut short by a crash) are skipped.
func Parse(r io.Reader) (Summary, error) {
	var s Summary
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var e Event
		if err := json.Unmarshal(line, &e); err != nil {
			continue
		}
		switch e.Type {
		case TypeProgramStart:
			s.ProgramStarted = true
		case TypeAgentReady:
			s.AgentReady = true
		case TypeExit, TypeBootFailed:
			ev := e
			s.Exit = &ev
		}
	}
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("events: %w", err)
	}
	return s, nil
}

// ParseFile parses the events file at path; a missing file is an empty stream.
func ParseFile(path string) (Summary, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return Summary{}, nil
	}
	if err != nil {
		return Summary{}, fmt.Errorf("events: %w", err)
	}
	defer f.Close()
	return Parse(f)
}
