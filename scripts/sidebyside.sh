#!/usr/bin/env bash
# kvgate router vs llm-d's Endpoint Picker, side by side in one run: the same `kvgate sim`
# engines, the same traffic (`kvgate bench --api chat` through `kvgate gateway --epp`), once per
# picker (kvgate router; llm-d's EPP with its approximate profile; with its precise profile fed
# by the engines' KV events and `kvgate tokenserver`), on the synthetic multi-turn workload and
# on the Mooncake trace (time-scaled 2x). Prints the table docs/BENCHMARKS.md holds.
#
#   scripts/sidebyside.sh [OUT.md]
#
# Knobs (environment): KVGATE_SIDEBYSIDE_ENGINES (4), KVGATE_SIDEBYSIDE_CONVERSATIONS (48),
# KVGATE_SIDEBYSIDE_MOONCAKE (requests, 150). Builds llm-d's EPP first (scripts/peers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-}
[ -z "$out" ] || out=$(realpath -m "$out")
bash scripts/peers.sh llm-d-epp >/dev/null
KVGATE_SIDEBYSIDE=1 KVGATE_SIDEBYSIDE_OUT="$out" \
  go test ./e2e -run 'TestSideBySide$' -count=1 -v -timeout 90m
