#!/usr/bin/env bash
# The whole test suite: vet, unit tests, then end-to-end tests that boot
# real VMs inside a network namespace they create. Run as root after
# `make setup build` (make test does both).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

echo "== go vet"
go vet ./...
echo "== unit tests"
go test -count=1 -timeout 15m ./internal/... ./cmd/...
echo "== end-to-end tests (real VMs; data dirs on a loop-mounted XFS, freezing by cloning)"
go test -count=1 -timeout 25m -v ./test/e2e/   # data dirs on XFS: freezing by cloning
echo "== end-to-end tests of fork and snapshots, freezing by moving (data dirs on /tmp)"
HYPEMAN_E2E_FREEZE=move go test -count=1 -timeout 15m -v -run 'TestFork$|TestCrashConsistency|TestCLIForkAndSnapshots' ./test/e2e/
