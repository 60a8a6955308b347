#!/usr/bin/env bash
# Benchmarks tcpchat against the servers people would use instead: Redis pub/sub,
# NATS and an IRC server (InspIRCd), all from Debian's packages, on this machine.
#
#   bench/run.sh           every workload on every server, 3 runs each (about 15 min)
#   bench/run.sh --quick   tcpchat only, small workloads, one run (CI's smoke test:
#                          it prints figures and fails only if a run was incomplete
#                          or lost, duplicated or reordered a message)
#
# Each run starts a fresh server pinned to CPU 0, runs the load generator
# (`tcpchat bench`) pinned to CPU 1, and stops the server. Results go to
# bench/results/ as JSON lines; the medians become the tables printed at the end,
# the chart docs/benchmarks.svg, and the results section of docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; fi

runs=3
targets="tcpchat redis nats irc"
results=bench/results/results.jsonl
if [ "$quick" = 1 ]; then
  runs=1
  targets="tcpchat"
  results=bench/results/quick.jsonl
fi

server_cpu=0
load_cpu=1
if [ "$(nproc)" -lt 2 ]; then
  echo "bench: only one CPU: server and load generator will share it" >&2
  load_cpu=0
fi

# The peers, from Debian's packages.
if [ "$quick" = 0 ]; then
  missing=""
  command -v redis-server >/dev/null || missing="$missing redis-server"
  command -v nats-server >/dev/null || missing="$missing nats-server"
  command -v inspircd >/dev/null || missing="$missing inspircd"
  if [ -n "$missing" ]; then
    echo "bench: installing$missing" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi

cargo build --release --locked
bin=target/release/tcpchat
# Tens of thousands of connections: every process may open as many files as allowed.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT

port=17400
start_server() {
  port=$((port + 1))
  case "$1" in
    tcpchat)
      taskset -c "$server_cpu" "$bin" serve --bind 127.0.0.1 --port "$port" \
        >"$work/server.log" 2>&1 &
      ;;
    redis)
      taskset -c "$server_cpu" redis-server --port "$port" --bind 127.0.0.1 \
        --save '' --appendonly no --protected-mode no --maxclients 19500 \
        --daemonize no >"$work/server.log" 2>&1 &
      ;;
    nats)
      taskset -c "$server_cpu" nats-server -a 127.0.0.1 -p "$port" \
        >"$work/server.log" 2>&1 &
      ;;
    irc)
      sed -e "s|@PORT@|$port|" -e "s|@DIR@|$work|" bench/peers/inspircd.conf.in \
        >"$work/inspircd.conf"
      taskset -c "$server_cpu" inspircd --runasroot --nofork --config="$work/inspircd.conf" \
        >"$work/server.log" 2>&1 &
      ;;
  esac
  server_pid=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench: $1 did not start:" >&2
  cat "$work/server.log" >&2
  return 1
}

# workload name, bench subcommand and its arguments (full, then quick).
workloads=(
  "fanout-4x100|fanout --viewers 100 --senders 4 --messages 50000|fanout --viewers 100 --senders 4 --messages 5000"
  "fanout-1x1000|fanout --viewers 1000 --senders 1 --messages 20000|fanout --viewers 1000 --senders 1 --messages 2000"
  "latency-10x100msgs|fanout --viewers 100 --senders 10 --messages 1000 --rate 100|fanout --viewers 100 --senders 10 --messages 200 --rate 100"
  "idle-19000|conns --viewers 19000|conns --viewers 2000"
)

mkdir -p bench/results
: >"$results"
failed=0
for run in $(seq "$runs"); do
  for target in $targets; do
    for workload in "${workloads[@]}"; do
      IFS='|' read -r name full small <<<"$workload"
      args=$full
      if [ "$quick" = 1 ]; then args=$small; fi
      echo "bench: run $run/$runs, $name on $target" >&2
      start_server "$target"
      # shellcheck disable=SC2086 # the arguments are meant to split
      if ! taskset -c "$load_cpu" "$bin" bench $args --target "$target" \
        --addr "127.0.0.1:$port" --label "$name" \
        $(case "$args" in conns*) echo "--pid $server_pid" ;; esac) >>"$results"; then
        failed=1
      fi
      stop_server
    done
  done
done

if [ "$quick" = 1 ]; then
  "$bin" bench report "$results"
else
  "$bin" bench report "$results" --svg docs/benchmarks.svg | tee bench/results/tables.md
  # The figures in docs/BENCHMARKS.md are exactly the ones printed above.
  python3 - bench/results/tables.md docs/BENCHMARKS.md <<'EOF'
import sys
tables, doc = open(sys.argv[1]).read(), open(sys.argv[2]).read()
begin, end = "<!-- results:begin -->", "<!-- results:end -->"
head, rest = doc.split(begin, 1)
_, tail = rest.split(end, 1)
open(sys.argv[2], "w").write(f"{head}{begin}\n{tables}{end}{tail}")
EOF
fi
exit "$failed"
