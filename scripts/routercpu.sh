#!/usr/bin/env bash
# kvgate router's CPU per request in a real run: N `kvgate sim` engines with KV events on,
# `kvgate router` as the EPP, `kvgate gateway --epp` in front (FULL_DUPLEX_STREAMED, as Envoy
# drives an EPP) and `kvgate bench --api chat` with the side-by-side synthetic multi-turn
# workload (e2e/sidebyside_test.go; kvgate's configuration only, no llm-d EPP). Prints the
# router's CPU per request (user+system from /proc/PID/stat) gross and net of idle, and its
# decision histogram's mean; with PPROF=1 it also writes a CPU profile of the router over the
# bench run (router --pprof-addr) to OUT/cpu.pprof, and one of the idle window to
# OUT/cpu-idle.pprof.
#
#   scripts/routercpu.sh [KVGATE_BINARY [OUTDIR]]
#
# Knobs (environment): ENGINES (4), CONVERSATIONS (48), IDLE (idle window, s: 10), PPROF (0),
# OUTPUT (output tokens per turn: 32), PORT0 (first port of the block it uses: 23100). Needs curl.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-./kvgate}")
out=${2:-$(mktemp -d)}
mkdir -p "$out"
engines=${ENGINES:-4} convs=${CONVERSATIONS:-48} idle=${IDLE:-10} port0=${PORT0:-23100}
simport=$port0 kvport=$((port0 + 1)) grpc=127.0.0.1:$((port0 + 2)) rhttp=127.0.0.1:$((port0 + 3))
gw=127.0.0.1:$((port0 + 4)) pprof=127.0.0.1:$((port0 + 5))
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
waitfor() { # waitfor WHAT CMD...: retry CMD every 0.2 s for 60 s
  local what=$1; shift
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "timed out waiting for $what" >&2; return 1
}
cpu() { # user+system seconds of a process (USER_HZ 100)
  awk '{ sub(/.*\) /, ""); print ($12 + $13) / 100 }' "/proc/$1/stat"
}
metric() { # metric NAME: summed over series, from the router's /metrics
  curl -s "http://$rhttp/metrics" | awk -v n="$1" '$1 == n || index($1, n"{") == 1 { s += $2 } END { print s + 0 }'
}

rargs=(router --grpc "$grpc" --http "$rhttp")
for i in $(seq "$engines"); do
  host=127.0.0.$((i + 1))
  "$bin" sim --host "$host" --port "$simport" --event-shape array --kv-events-replay "" \
    --kv-events "tcp://$host:$kvport" >"$out/sim$i.log" 2>&1 &
  pids+=($!)
  rargs+=(--endpoint "http://$host:$simport" --kv-events "tcp://$host:$kvport")
done
for i in $(seq "$engines"); do waitfor "sim $i" curl -sf "http://127.0.0.$((i + 1)):$simport/health"; done
[ "${PPROF:-0}" = 1 ] && rargs+=(--pprof-addr "$pprof")
"$bin" "${rargs[@]}" >"$out/router.log" 2>&1 &
rpid=$!
pids+=($rpid)
waitfor router curl -sf "http://$rhttp/health"
waitfor "every engine healthy" bash -c "[ \"\$(curl -s http://$rhttp/metrics | awk '\$1 ~ /^kvgate_router_endpoint_healthy/ { s += \$2 } END { print s + 0 }')\" = $engines ]"
gargs=(gateway --epp "$grpc" --http "$gw" --served-model Qwen/Qwen3-8B)
for i in $(seq "$engines"); do gargs+=(--endpoint "http://127.0.0.$((i + 1)):$simport"); done
"$bin" "${gargs[@]}" >"$out/gateway.log" 2>&1 &
pids+=($!)
waitfor gateway curl -sf "http://$gw/health"

c0=$(cpu $rpid)
if [ "${PPROF:-0}" = 1 ]; then # the idle window's own profile
  curl -s -o "$out/cpu-idle.pprof" "http://$pprof/debug/pprof/profile?seconds=$idle"
else
  sleep "$idle"
fi
c1=$(cpu $rpid)
if [ "${PPROF:-0}" = 1 ]; then
  curl -s -o "$out/cpu.pprof" "http://$pprof/debug/pprof/profile?seconds=${PROFILE_S:-40}" &
  prof=$!
fi
t0=$(date +%s.%N)
"$bin" bench --url "http://$gw" --api chat --json --no-progress --synthetic --syn-conversations "$convs" \
  --syn-turns 4 --syn-system-prompts 4 --syn-system-tokens 1024 --syn-user-tokens 128 \
  --syn-output-tokens "${OUTPUT:-32}" --syn-rate 4 --syn-think-time 2s >"$out/bench.json"
t1=$(date +%s.%N)
c2=$(cpu $rpid)
[ "${PPROF:-0}" = 1 ] && wait "$prof"
curl -s "http://$rhttp/metrics" >"$out/router-metrics.txt"
n=$(metric kvgate_router_decision_seconds_count)
dsum=$(metric kvgate_router_decision_seconds_sum)
reqs=$(sed -n 's/.*"requests": *\([0-9]*\).*/\1/p' "$out/bench.json" | head -1)
errs=$(sed -n 's/.*"errors": *\([0-9]*\).*/\1/p' "$out/bench.json" | head -1)
awk -v c0="$c0" -v c1="$c1" -v c2="$c2" -v t0="$t0" -v t1="$t1" -v idle="$idle" -v n="$n" -v dsum="$dsum" \
  -v reqs="$reqs" -v errs="$errs" -v bin="$bin" 'BEGIN {
  wall = t1 - t0; gross = c2 - c1; net = gross - (c1 - c0) * wall / idle
  printf "%s: %d requests (%d errors) in %.1f s; router CPU %.2f s, idle %.2f s/%d s; CPU/req gross %.2f ms, net of idle %.2f ms; decision mean %.3f ms over %d\n",
    bin, reqs, errs, wall, gross, c1 - c0, idle, gross / reqs * 1000, net / reqs * 1000, dsum / n * 1000, n
}' | tee "$out/summary.txt"
