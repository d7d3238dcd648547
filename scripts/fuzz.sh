#!/usr/bin/env bash
# Runs every Go fuzz target in the module for $1 (default 20s) each.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-20s}
grep -rl --include='*_test.go' '^func Fuzz' . | while read -r f; do
  pkg=./$(dirname "${f#./}")
  for fn in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | sed 's/^func //'); do
    echo "fuzz $pkg $fn ($t)"
    go test -run '^$' -fuzz "^$fn\$" -fuzztime "$t" "$pkg"
  done
done
