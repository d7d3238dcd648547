#!/usr/bin/env bash
# Import-boundary check: dependencies point down ARCHITECTURE.md's table, never back up.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=github.com/kvgate/kvgate
fail=0
check() { # package, forbidden imports...
  local pkg=$1; shift
  [ -d "$pkg" ] || return 0
  local imports
  imports=$(go list -f '{{join .Imports "\n"}}' "./$pkg/..." 2>/dev/null | sort -u)
  for bad in "$@"; do
    if echo "$imports" | grep -qx "$mod/$bad\(/.*\)\?"; then
      echo "boundary: $pkg must not import $bad"; fail=1
    fi
  done
}
leaf="router extproc gateway workerd xds discovery gpu planner cmd e2e"
check openai tokenizer kvindex $leaf engine
check tokenizer openai kvindex $leaf engine
check kvindex openai tokenizer $leaf engine
check router extproc gateway workerd xds discovery gpu planner cmd e2e
check extproc gateway workerd xds discovery gpu planner cmd e2e
check gateway extproc workerd xds discovery gpu planner cmd e2e
check discovery router extproc gateway workerd xds planner cmd e2e
check gpu router extproc gateway workerd xds discovery planner cmd e2e
check xds router extproc gateway workerd planner cmd e2e
check envoy xds bootstrap router extproc gateway workerd discovery cmd e2e
check workload openai tokenizer kvindex router extproc gateway workerd xds discovery engine cmd e2e
check bench router extproc gateway workerd xds discovery engine replay cmd e2e
check replay extproc gateway workerd xds discovery cmd e2e
check engine router extproc gateway workerd xds discovery replay bench cmd e2e
exit $fail
