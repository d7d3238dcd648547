#!/usr/bin/env bash
# Builds the outside programs the end-to-end tests run against, from pinned module versions,
# once per machine: each lands in the user's cache directory keyed by its version, so a fresh
# clone (CI's) finds it again without rebuilding.
#   consul               HashiCorp Consul v1.22.7 (discovery tests run `consul agent -dev`)
#   llm-d-inference-sim  llm-d's vLLM simulator v0.10.2 (a foreign engine for routing tests)
#   llm-d-epp            llm-d's Endpoint Picker (llm-d-inference-scheduler v0.7.1 cmd/epp), a
#                        foreign EPP for the side-by-side measurement (e2e/llmd)
#   ollama               Ollama v0.12.6, a real CPU engine (llama.cpp and ggml compiled with cgo;
#                        e2e/ollama_test.go runs two of them behind kvgate)
#   kube-apiserver       Kubernetes' API server v1.37.2 (k8s.io/kubernetes cmd/kube-apiserver) and
#   etcd                 etcd v3.7.0 (the version kube-apiserver requires), which discovery/kube's
#                        TestKubeAPIServer runs (package kubetest/apiserver). The costliest build:
#                        etcd about 2 CPU-minutes, kube-apiserver about 30 cold (27 minutes of wall
#                        time on the shared 2-core machine; docs/KUBERNETES.md)
# None has a Debian package and `go install` fails on their replace directives, so each
# module is downloaded, copied somewhere writable, its replaces dropped, and built.
#
#   scripts/peers.sh            build every peer that is missing, print the cache directory
#   scripts/peers.sh NAME...    build the named peers if missing, print each binary's path
#
# The cache is $KVGATE_PEERS, else ${XDG_CACHE_HOME:-$HOME/.cache}/kvgate/peers; a binary lives
# at <cache>/<name>@<version>/<name>.
set -euo pipefail
out=${KVGATE_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/kvgate/peers}
mkdir -p "$out"

declare -A version=([consul]=v1.22.7 [llm-d-inference-sim]=v0.10.2 [llm-d-epp]=v0.7.1 [ollama]=v0.12.6 [kube-apiserver]=v1.37.2 [etcd]=v3.7.0)

work=""
cleanup() { [ -z "$work" ] || { chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"; }; }
trap cleanup EXIT

fetch() { # module@version -> prints a writable copy of its directory
  [ -n "$work" ] || work=$(mktemp -d)
  local dir
  dir=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  local copy="$work/$(basename "${1%@*}")"
  cp -r "$dir" "$copy" && chmod -R u+w "$copy"
  echo "$copy"
}

build_consul() { # $1: output binary
  local src
  src=$(fetch "github.com/hashicorp/consul@${version[consul]}")
  (
    cd "$src"
    for m in api envoyextensions proto-public sdk troubleshoot; do
      go mod edit -dropreplace="github.com/hashicorp/consul/$m"
    done
    go mod edit -require=github.com/hashicorp/consul/api@v1.34.5
    GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$1" .
  )
}

build_llm-d-inference-sim() { # $1: output binary
  local src
  src=$(fetch "github.com/llm-d/llm-d-inference-sim@${version[llm-d-inference-sim]}")
  (cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$1" ./cmd/llm-d-inference-sim)
}

build_llm-d-epp() { # $1: output binary
  # Built from a throwaway main module that requires the scheduler, with the Gateway API Inference
  # Extension and llm-d-kv-cache raised to the versions it works with (it asks for older ones).
  [ -n "$work" ] || work=$(mktemp -d)
  local mod="$work/llm-d-epp"
  mkdir -p "$mod"
  (
    cd "$mod"
    go mod init kvgate.local/llm-d-epp >/dev/null 2>&1
    go mod edit \
      -require="github.com/llm-d/llm-d-inference-scheduler@${version[llm-d-epp]}" \
      -require=sigs.k8s.io/gateway-api-inference-extension@v1.4.0 \
      -require=github.com/llm-d/llm-d-kv-cache@v0.8.1
    GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$1" github.com/llm-d/llm-d-inference-scheduler/cmd/epp
  )
}

debian_headers() { # Debian packages... -> installs those not installed yet
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  echo "peers: installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
    { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; } ||
    { echo "peers: could not install ${missing[*]}; install them (apt-get install ${missing[*]}) and rerun" >&2; exit 1; }
}

build_ollama() { # $1: output binary
  # cgo compiles llama.cpp and ggml's CPU backend (no cmake). Module zips leave out every
  # directory named vendor, so llama.cpp's vendored headers are missing: nlohmann/json and stb
  # come from Debian, and miniaudio (which Debian lacks) gets the stand-in written below.
  debian_headers nlohmann-json3-dev libstb-dev
  local src
  src=$(fetch "github.com/ollama/ollama@${version[ollama]}")
  mkdir -p "$src/llama/llama.cpp/vendor/miniaudio"
  cat >"$src/llama/llama.cpp/vendor/miniaudio/miniaudio.h" <<'HEADER'
/* Stand-in for miniaudio.h, written by kvgate's scripts/peers.sh: the Ollama module zip lacks
 * llama.cpp's vendor directory, and Debian has no miniaudio package. Only mtmd-helper.cpp uses it,
 * to decode audio inputs for multimodal models; this stand-in declares exactly what that file
 * calls and refuses every decode, so an audio input is rejected as "not a valid audio file" while
 * text and image requests are unaffected. */
#ifndef KVGATE_MINIAUDIO_STANDIN_H
#define KVGATE_MINIAUDIO_STANDIN_H
#include <stddef.h>
typedef int ma_result;
typedef unsigned long long ma_uint64;
typedef unsigned int ma_uint32;
#define MA_SUCCESS 0
#define MA_NOT_IMPLEMENTED (-29)
typedef enum { ma_format_unknown = 0, ma_format_f32 = 5 } ma_format;
typedef struct { ma_format format; ma_uint32 channels; ma_uint32 sampleRate; } ma_decoder_config;
typedef struct { int unused; } ma_decoder;
static inline ma_decoder_config ma_decoder_config_init(ma_format f, ma_uint32 channels, ma_uint32 rate) {
    ma_decoder_config c; c.format = f; c.channels = channels; c.sampleRate = rate; return c;
}
static inline ma_result ma_decoder_init_memory(const void *data, size_t size, const ma_decoder_config *config, ma_decoder *decoder) {
    (void)data; (void)size; (void)config; (void)decoder; return MA_NOT_IMPLEMENTED;
}
static inline ma_result ma_decoder_get_length_in_pcm_frames(ma_decoder *decoder, ma_uint64 *frames) {
    (void)decoder; *frames = 0; return MA_NOT_IMPLEMENTED;
}
static inline ma_result ma_decoder_read_pcm_frames(ma_decoder *decoder, void *out, ma_uint64 count, ma_uint64 *read) {
    (void)decoder; (void)out; (void)count; *read = 0; return MA_NOT_IMPLEMENTED;
}
static inline ma_result ma_decoder_uninit(ma_decoder *decoder) { (void)decoder; return MA_SUCCESS; }
#endif
HEADER
  (cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=1 go build -trimpath \
    -ldflags "-X github.com/ollama/ollama/version.Version=${version[ollama]#v}" -o "$1" .)
}

kube_module() { # prints a throwaway main module that requires k8s.io/kubernetes and etcd's server
  # k8s.io/kubernetes requires its staging modules (k8s.io/api, ...) at v0.0.0 and replaces them
  # with folders of its own repository; a dependency's replaces do not apply, so the module requires
  # each at the release that matches (v1.N.M -> v0.N.M). The etcd main sits in the same module,
  # so both share one set of dependency versions (and their compiled packages).
  [ -n "$work" ] || work=$(mktemp -d)
  local mod="$work/kube" kv=${version[kube-apiserver]}
  if [ ! -f "$mod/go.mod" ]; then
    mkdir -p "$mod/etcd"
    local gomod
    gomod=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$kv" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
    (
      cd "$mod"
      go mod init kvgate.local/kube >/dev/null 2>&1
      local args=(-require="k8s.io/kubernetes@$kv" -require="go.etcd.io/etcd/server/v3@${version[etcd]}")
      for m in $(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod"); do
        args+=(-require="$m@v0.${kv#v1.}")
      done
      go mod edit "${args[@]}"
      cat >etcd/main.go <<'GO'
// Command etcd is etcd's server, built from its module at the version kube-apiserver requires.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    )
  fi
  echo "$mod"
}

build_kube-apiserver() { # $1: output binary
  local mod
  [ -n "$work" ] || work=$(mktemp -d) # here, not in kube_module's subshell, so cleanup sees it
  mod=$(kube_module)
  (cd "$mod" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$1" k8s.io/kubernetes/cmd/kube-apiserver)
}

build_etcd() { # $1: output binary
  local mod
  [ -n "$work" ] || work=$(mktemp -d)
  mod=$(kube_module)
  (cd "$mod" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$1" ./etcd)
}

ensure() { # name -> prints the binary's path, building it if missing
  local name=$1 v=${version[$1]:-}
  [ -n "$v" ] || { echo "peers: unknown peer $name (known: ${!version[*]})" >&2; exit 2; }
  local dir="$out/$name@$v" bin="$out/$name@$v/$name"
  if [ ! -x "$bin" ]; then
    mkdir -p "$dir"
    # One builder at a time per peer: parallel test packages may ask together.
    exec 9>"$dir/.lock"
    flock 9
    if [ ! -x "$bin" ]; then
      echo "peers: building $name $v into $dir (minutes, once per machine)" >&2
      "build_$name" "$bin.tmp.$$"
      mv "$bin.tmp.$$" "$bin"
    fi
    exec 9>&-
  fi
  echo "$bin"
}

if [ $# -eq 0 ]; then
  names=(consul llm-d-inference-sim llm-d-epp ollama)
  names+=(etcd kube-apiserver) # the costliest build (discovery/kube's real API); without this line the tests build them on first use
  for name in "${names[@]}"; do ensure "$name" >/dev/null; done
  echo "$out"
else
  for name in "$@"; do ensure "$name"; done
fi
