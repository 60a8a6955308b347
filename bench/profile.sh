#!/usr/bin/env bash
# Where a server's CPU time goes on one workload: perf samples the server (pinned
# to CPU 0) while the load generator runs on CPU 1, then prints the share spent in
# the kernel and in the server's own code, and the hottest functions.
#
#   bench/profile.sh TARGET WORKLOAD      e.g. bench/profile.sh tcpchat latency-10x100msgs
#
# TARGET: tcpchat, tcpchat-nohistory, tcpchat-fsync, redis, nats or irc (tcpchat+tls
# or redis+tls: over TLS; tcpchat+ws, nats+ws: viewers over WebSocket, +ws-all:
# senders too; tcpchat+scrape: /metrics scraped every second). WORKLOAD: a name
# from bench/lib.sh (fanout-4x100, fanout-1x1000, durable-4x100, durable-1x1000,
# latency-10x100msgs, catchup-100x10k, idle-19000, scrape-4x100). For idle-N only
# the one message to all is sampled: perf starts once the server holds every
# connection and stops once the message has reached them all.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 2 ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
target=$1
workload=$2

# shellcheck source=bench/lib.sh
. bench/lib.sh
args=$(workload_args "$workload")
if [ -z "$args" ]; then
  echo "bench: no workload named $workload" >&2
  exit 2
fi
case "$workload" in idle-*) args="$args --hold 3s" ;; esac
args="$args $(target_args "$target") --server-cpu $server_cpu"
if ! command -v perf >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
install_peers "$target"
cargo build --release --locked -p tcpchat -p tcpchat-bench
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
bench_pid=""
perf_pid=""
# On any early exit: the load generator, asked to stop, stops the server it started.
# shellcheck disable=SC2317 # run by the trap
cleanup() {
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null || true; fi
  if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck disable=SC2086 # the arguments are meant to split
taskset -c "$load_cpu" "$bench_bin" $args >"$work/result.json" 2>"$work/bench.log" &
bench_pid=$!

# The load generator says which process the server is once it is up (within the
# harness's 20 s start timeout; a minute is ample).
server_pid=""
for _ in $(seq 300); do
  server_pid=$(sed -n 's/^bench: server pid \([0-9][0-9]*\) listening on .*/\1/p' \
    "$work/bench.log" | head -n 1)
  if [ -n "$server_pid" ] || ! kill -0 "$bench_pid" 2>/dev/null; then break; fi
  sleep 0.2
done
if [ -z "$server_pid" ]; then
  echo "bench: the server did not start:" >&2
  cat "$work/bench.log" >&2
  exit 1
fi

case "$workload" in
  idle-*)
    viewers=${workload#idle-}
    while kill -0 "$bench_pid" 2>/dev/null &&
      [ "$(find "/proc/$server_pid/fd" -mindepth 1 | wc -l)" -lt "$viewers" ]; do
      sleep 0.2
    done
    ;;
esac
perf record -q -F 4999 -g -p "$server_pid" -o "$work/perf.data" 2>"$work/perf.log" &
perf_pid=$!
# Sampling ends when the workload does: for idle-N once the message has reached
# everyone (before the closes), otherwise before the server is stopped. Either line
# comes before the load generator exits, which ends the wait in any case.
case "$workload" in
  idle-*) until='^conns: holding' ;;
  *) until='^bench: stopping server' ;;
esac
grep -q -m1 "$until" < <(tail -n +1 --pid="$bench_pid" -f "$work/bench.log") || true
kill -INT "$perf_pid" 2>/dev/null || true
wait "$perf_pid" 2>/dev/null || true
perf_pid=""
status=0
wait "$bench_pid" || status=$?
bench_pid=""
cat "$work/bench.log" >&2

perf report -i "$work/perf.data" --stdio --no-children -g none --sort sym \
  --percent-limit 0.01 2>/dev/null | grep '%' >"$work/symbols.txt" || true
echo "$target on $workload: share of the server's samples"
awk '{ gsub("%", "", $1); if ($2 == "[k]") k += $1; else u += $1 }
     END { printf "  kernel %.1f%%, user space %.1f%%\n", k, u }' "$work/symbols.txt"
echo "hottest functions ([k] kernel, [.] user space):"
head -25 "$work/symbols.txt"
if [ -n "${PROFILE_KEEP:-}" ]; then cp "$work/symbols.txt" "$PROFILE_KEEP"; fi
exit "$status"
