// Package instances owns the lifecycle of instances: create, start, stop,
// delete, and (later) standby, restore and fork. It is the only package that
// writes instance metadata or starts VMs.
//
// State is derived, never stored: an instance whose VM process runs is
// Initializing until the guest reports that the program started, then
// Running; without a VM process it is Stopped (or Standby when a memory
// snapshot exists). The filesystem is the source of truth: everything about
// an instance lives in its data dir (see internal/paths), metadata is
// written atomically, and a restarted daemon rebuilds its view from the
// data dir and the VM processes that kept running.
//
// Each operation is a list of named steps with undo actions (steps.go); a
// failed step undoes the earlier ones in reverse, so a failed create leaves
// no process, TAP or directory behind. Operations on one instance are
// serialized by a per-instance lock; a request that finds the instance in
// the wrong state gets an invalid_state conflict.
//
// This package imports no HTTP types; errors carry errdefs classes and API
// codes, mapped to statuses by internal/api.
package instances
