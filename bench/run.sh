#!/usr/bin/env bash
# Benchmarks tcpchat against the servers people would use instead: Redis pub/sub,
# NATS and an IRC server (InspIRCd), all from Debian's packages, on this machine;
# and against Redis Streams and NATS JetStream for the workloads of a kept history.
#
#   bench/run.sh           every workload on its servers (bench/lib.sh), 3 runs each,
#                          tcpchat and Redis over TLS too, tcpchat and NATS over
#                          WebSocket too (about 40 min)
#   bench/run.sh --report  only the tables, chart and docs from the last full run's results
#   bench/run.sh --quick   tcpchat only (with and without history, plain, TLS and
#                          WebSocket, scraped), small workloads, one run (CI's smoke
#                          test: it prints figures and fails only if a run was
#                          incomplete or lost, duplicated or reordered a message, or
#                          a scrape of /metrics failed)
#   bench/run.sh --web     the WebSocket and /metrics figures alone: the fan-outs on
#                          tcpchat and NATS, plain and over WebSocket, and tcpchat with
#                          and without a /metrics scrape every second, 3 runs each
#                          (a few minutes; into bench/results/web.jsonl and
#                          web-tables.md, docs untouched)
#   bench/run.sh --cluster the cluster figures alone: tcpchat clusters of 2 and 3
#                          nodes on one nats-server with JetStream (senders on one
#                          node, and on every node) beside one tcpchat, NATS core
#                          pub/sub and JetStream, in the fan-outs and the latency
#                          workload, 3 runs each (a few minutes; into
#                          bench/results/cluster.jsonl and cluster-tables.md, docs
#                          untouched). The quick run adds one short cluster run if
#                          nats-server is installed.
#
# Each run is one `tcpchat-bench` pinned to CPU 1, which starts a fresh server pinned
# to CPU 0, runs the workload and stops the server (a cluster's nats-server and
# nodes all share CPU 0). Results go to bench/results/ as
# JSON lines; the medians become the tables printed at the end, the chart
# docs/benchmarks.svg, and the results section of docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
variant=full
report_only=0
case "${1:-}" in
  --quick) quick=1 variant=quick ;;
  --web) variant=web ;;
  --cluster) variant=cluster ;;
  --report) report_only=1 ;;
  "") ;;
  *) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

# A target with +tls is the same server with every client over TLS (tcpchat and
# Redis only), with +ws its viewers over WebSocket, with +ws-all every client
# (tcpchat and NATS only), and tcpchat+scrape is tcpchat scraped every second;
# tcpchat-nohistory is tcpchat with --history off, tcpchat-fsync tcpchat with
# --fsync (full run only). Each workload runs on the targets bench/lib.sh gives it.
runs=3
results=bench/results/results.jsonl
if [ "$quick" = 1 ]; then
  runs=1
  results=bench/results/quick.jsonl
elif [ "$variant" = web ]; then
  results=bench/results/web.jsonl
elif [ "$variant" = cluster ]; then
  results=bench/results/cluster.jsonl
fi

# shellcheck source=bench/lib.sh
. bench/lib.sh
targets=$(run_targets "$variant")
if [ "$variant" = cluster ]; then
  workloads=("${cluster_workloads[@]}")
fi
cargo build --release --locked -p tcpchat -p tcpchat-bench
failed=0
if [ "$report_only" = 0 ]; then
  # shellcheck disable=SC2086 # one word per target
  install_peers $targets
  # Tens of thousands of connections: every process may open as many files as allowed.
  ulimit -n "$(ulimit -Hn)"

  mkdir -p bench/results
  : >"$results"
  for run in $(seq "$runs"); do
    for target in $targets; do
      for workload in "${workloads[@]}"; do
        name=${workload%%|*}
        case " $(workload_targets "$name" "$variant") " in
          *" $target "*) ;;
          *) continue ;;
        esac
        args=$(workload_args "$name" "$variant")
        echo "bench: run $run/$runs, ${args##*--label } on $target" >&2
        args="$args $(target_args "$target")"
        # shellcheck disable=SC2086 # the arguments are meant to split
        if ! taskset -c "$load_cpu" "$bench_bin" $args --server-cpu "$server_cpu" \
          >>"$results"; then
          failed=1
        fi
      done
    done
  done
  # One short run of a 2-node cluster, senders on both nodes, if NATS is here.
  if [ "$quick" = 1 ] && command -v nats-server >/dev/null; then
    workloads=("${cluster_workloads[0]}")
    args=$(workload_args cluster-4x100 quick)
    echo "bench: ${args##*--label } on cluster2+senders-all" >&2
    args="$args $(target_args cluster2+senders-all)"
    # shellcheck disable=SC2086 # the arguments are meant to split
    if ! taskset -c "$load_cpu" "$bench_bin" $args --server-cpu "$server_cpu" \
      >>"$results"; then
      failed=1
    fi
  fi
fi

if [ "$quick" = 1 ]; then
  "$bench_bin" report "$results"
elif [ "$variant" = web ]; then
  "$bench_bin" report "$results" | tee bench/results/web-tables.md
elif [ "$variant" = cluster ]; then
  "$bench_bin" report --cluster "$results" | tee bench/results/cluster-tables.md
else
  "$bench_bin" report "$results" --svg docs/benchmarks.svg | tee bench/results/tables.md
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
