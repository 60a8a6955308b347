#!/usr/bin/env bash
# Where a server's CPU time goes on one workload: perf samples the server (pinned
# to CPU 0) while the load generator runs on CPU 1, then prints the share spent in
# the kernel and in the server's own code, and the hottest functions.
#
#   bench/profile.sh TARGET WORKLOAD      e.g. bench/profile.sh tcpchat latency-10x100msgs
#
# TARGET: tcpchat, redis, nats or irc. WORKLOAD: a name from bench/lib.sh
# (fanout-4x100, fanout-1x1000, latency-10x100msgs, idle-19000). For idle-N only the
# one message to all is sampled: perf starts once the server holds every connection.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 2 ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
target=$1
workload=$2

# shellcheck source=bench/lib.sh
. bench/lib.sh
if ! command -v perf >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
install_peers "$target"
cargo build --release --locked -p tcpchat -p tcpchat-bench
ulimit -n "$(ulimit -Hn)"

start_server "$target"
args=$(workload_args "$workload")
case "$workload" in idle-*) args="$args --hold 3s" ;; esac
if [ -z "$args" ]; then
  echo "bench: no workload named $workload" >&2
  exit 2
fi
# shellcheck disable=SC2086 # the arguments are meant to split
taskset -c "$load_cpu" "$bench_bin" $args --target "$target" \
  >"$work/result.json" 2>"$work/bench.log" &
bench_pid=$!

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
case "$workload" in
  idle-*) # Until the message has reached everyone, before the closes.
    grep -q -m1 '^conns: holding' < <(tail -n +1 --pid="$bench_pid" -f "$work/bench.log") || true
    ;;
esac
status=0
wait "$bench_pid" || status=$?
kill -INT "$perf_pid" 2>/dev/null || true
cat "$work/bench.log" >&2
wait "$perf_pid" 2>/dev/null || true
stop_server

perf report -i "$work/perf.data" --stdio --no-children -g none --sort sym \
  --percent-limit 0.01 2>/dev/null | grep '%' >"$work/symbols.txt" || true
echo "$target on $workload: share of the server's samples"
awk '{ gsub("%", "", $1); if ($2 == "[k]") k += $1; else u += $1 }
     END { printf "  kernel %.1f%%, user space %.1f%%\n", k, u }' "$work/symbols.txt"
echo "hottest functions ([k] kernel, [.] user space):"
head -25 "$work/symbols.txt"
if [ -n "${PROFILE_KEEP:-}" ]; then cp "$work/symbols.txt" "$PROFILE_KEEP"; fi
exit "$status"
