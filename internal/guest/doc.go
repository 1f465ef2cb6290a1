// Package guest holds the code that runs inside the VM and the contracts the
// host shares with it.
//
//   - vmconfig: the JSON document the host writes to the config disk and the
//     guest init reads at boot.
//   - events: the JSON-lines records the guest writes to the events port
//     (boot markers, the program's exit status) and the host parses.
//   - initd: the guest's PID 1 (run by cmd/hypeman-guest).
//   - agentd: the guest agent (the same binary, started by init as
//     "hypeman-agent"): exec, cp, stat, shutdown and identity calls from
//     the host over the agent port.
//
// Host packages may import vmconfig and events; nothing on the host imports
// initd or agentd, and they import nothing from the host side but the
// shared protocol (internal/agent/proto).
package guest
