#!/usr/bin/env bash
# Builds the outside programs the end-to-end tests run against, from pinned module versions,
# and caches them in $KVGATE_PEERS (default: .cache/peers under the repository):
#   consul               HashiCorp Consul v1.22.7 (discovery tests run `consul agent -dev`)
#   llm-d-inference-sim  llm-d's vLLM simulator v0.10.2 (a foreign engine for routing tests)
# Neither has a Debian package and `go install` fails on their replace directives, so each
# module is downloaded, copied somewhere writable, its replaces dropped, and built.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${KVGATE_PEERS:-$root/.cache/peers}
mkdir -p "$out"
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

fetch() { # module@version -> prints a writable copy of its directory
  local dir
  dir=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  local copy="$work/$(basename "${1%@*}")"
  cp -r "$dir" "$copy" && chmod -R u+w "$copy"
  echo "$copy"
}

if [ ! -x "$out/consul" ]; then
  echo "peers: building consul v1.22.7 (a few minutes cold)" >&2
  src=$(fetch github.com/hashicorp/consul@v1.22.7)
  (
    cd "$src"
    for m in api envoyextensions proto-public sdk troubleshoot; do
      go mod edit -dropreplace="github.com/hashicorp/consul/$m"
    done
    go mod edit -require=github.com/hashicorp/consul/api@v1.34.5
    GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$out/consul.tmp" .
  )
  mv "$out/consul.tmp" "$out/consul"
fi

if [ ! -x "$out/llm-d-inference-sim" ]; then
  echo "peers: building llm-d-inference-sim v0.10.2" >&2
  src=$(fetch github.com/llm-d/llm-d-inference-sim@v0.10.2)
  (
    cd "$src"
    GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$out/llm-d-inference-sim.tmp" ./cmd/llm-d-inference-sim
  )
  mv "$out/llm-d-inference-sim.tmp" "$out/llm-d-inference-sim"
fi
echo "$out"
