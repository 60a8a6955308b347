# shellcheck shell=bash disable=SC2034 # sourced: its variables are for the scripts that source it
# Shared by bench/run.sh and bench/profile.sh (sourced, not run): the peers'
# installation and the workloads, with the CPUs and the load generator they run on.
# The load generator starts and stops each server itself. Expects to be sourced
# from the repository's root.

server_cpu=0
load_cpu=1
if [ "$(nproc)" -lt 2 ]; then
  echo "bench: only one CPU: server and load generator will share it" >&2
  load_cpu=0
fi

# Built by `cargo build --release`, wherever cargo puts it; the tcpchat it starts is
# the one beside it.
bench_bin=${CARGO_TARGET_DIR:-target}/release/tcpchat-bench

# Installs whichever of the given targets' servers is missing, from Debian's packages
# (a target may carry +tls, +ws, +ws-all or +scrape: the same server).
install_peers() {
  local missing="" target
  for target in "$@"; do
    case "${target%%+*}" in
      redis) command -v redis-server >/dev/null || missing="$missing redis-server" ;;
      nats | jetstream | cluster*) command -v nats-server >/dev/null || missing="$missing nats-server" ;;
      irc) command -v inspircd >/dev/null || missing="$missing inspircd" ;;
    esac
  done
  if [ -n "$missing" ]; then
    echo "bench: installing$missing" >&2
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
}

# The arguments of `tcpchat-bench` naming target $1: tcpchat, tcpchat-nohistory
# (tcpchat with --history off), tcpchat-fsync (tcpchat with --fsync), redis, nats or
# irc; tcpchat+tls or redis+tls for the same server over TLS; tcpchat+ws or nats+ws
# with the viewers over WebSocket (tcpchat's /ws, NATS's websocket listener) and
# the senders in the server's own protocol, tcpchat+ws-all or nats+ws-all with the
# senders over WebSocket too; tcpchat+scrape for tcpchat with its /metrics
# scraped every second during the load. For the cluster run: jetstream (nats with
# JetStream, the durable fan-out's clients), and clusterN for a tcpchat cluster of N
# nodes on one nats-server with JetStream, viewers spread evenly over the nodes,
# senders on the first node (clusterN+senders-all: spread over every node).
target_args() {
  case "$1" in
    jetstream) echo "--target nats --durable" ;;
    cluster*+senders-all)
      local nodes=${1#cluster}
      echo "--target tcpchat --cluster-nodes ${nodes%%+*} --senders-on all"
      ;;
    cluster*) echo "--target tcpchat --cluster-nodes ${1#cluster} --senders-on one" ;;
    *+tls) echo "--target ${1%+tls} --tls" ;;
    *+ws) echo "--target ${1%+ws} --ws" ;;
    *+ws-all) echo "--target ${1%+ws-all} --ws --ws-senders" ;;
    *+scrape) echo "--target ${1%+scrape} --scrape 1s" ;;
    *) echo "--target $1" ;;
  esac
}

# The arguments of `tcpchat-bench` for workload $1 ("quick" as $2 for the small
# variant), or nothing if there is no such workload.
workload_args() {
  local workload name full quick_name quick _targets
  for workload in "${workloads[@]}"; do
    IFS='|' read -r name full quick_name quick _targets <<<"$workload"
    if [ "$name" = "$1" ]; then
      if [ "${2:-}" = quick ]; then
        name=$quick_name
        full=$quick
      fi
      echo "$full --label $name"
      return 0
    fi
  done
}

# Every target of a run, in the order each round runs them ("quick", "web" or
# "cluster" as $1 for those runs').
run_targets() {
  case "${1:-}" in
    cluster) echo "tcpchat nats jetstream cluster2 cluster2+senders-all cluster3 cluster3+senders-all" ;;
    quick) echo "tcpchat tcpchat-nohistory tcpchat+tls tcpchat+ws tcpchat+ws-all tcpchat+scrape" ;;
    web) echo "tcpchat nats tcpchat+ws nats+ws tcpchat+ws-all nats+ws-all tcpchat+scrape" ;;
    *) echo "tcpchat tcpchat-nohistory tcpchat-fsync redis nats irc tcpchat+tls redis+tls" \
      "tcpchat+ws nats+ws tcpchat+ws-all nats+ws-all tcpchat+scrape" ;;
  esac
}

# The targets workload $1 runs on ("quick" or "web" as $2 for those runs'; for the
# cluster run, the entries of cluster_workloads are the workloads, and their
# fifth field their targets).
workload_targets() {
  local workload name _full _quick_name _quick full_targets quick_targets web_targets
  for workload in "${workloads[@]}"; do
    IFS='|' read -r name _full _quick_name _quick full_targets quick_targets web_targets \
      <<<"$workload"
    if [ "$name" = "$1" ]; then
      case "${2:-}" in
        quick) echo "${quick_targets:-tcpchat tcpchat+tls}" ;;
        web) echo "$web_targets" ;;
        *) echo "${full_targets:-tcpchat redis nats irc tcpchat+tls redis+tls}" ;;
      esac
      return 0
    fi
  done
}

# Each workload: its name and `tcpchat-bench` arguments, then the same for the small
# variant of the quick run, then the targets it runs on in the full run, in the
# quick one (when not given: every server, plain and TLS; tcpchat plain and TLS)
# and in the web one (`run.sh --web`; when not given, it is not in that run).
#
# - fanout-*: also with the viewers over WebSocket (tcpchat+ws against nats+ws:
#   their deliveries/s, and each one's server CPU per delivery against its plain
#   row), and with the senders over WebSocket too (+ws-all).
# - scrape-*: a fan-out long enough for several scrapes, on tcpchat with and
#   without its /metrics scraped every second (tcpchat+scrape).
# - durable-*: the fan-out again, against the peers that keep what they deliver:
#   Redis Streams (append-only file on) and NATS JetStream (file storage); tcpchat as
#   always, with its history, and tcpchat-fsync (--fsync), to price the fsync.
# - catchup-*: a room of E messages, then V viewers at once each asking for the last
#   E (tcpchat `viewer history=E tags`, Redis XREVRANGE, a JetStream consumer).
# - latency-*: also on tcpchat-nohistory (--history off), to price the history, and
#   on tcpchat-fsync (--fsync), to price the fsync.
workloads=(
  "fanout-4x100|fanout --viewers 100 --senders 4 --messages 50000|fanout-4x100|fanout --viewers 100 --senders 4 --messages 5000|tcpchat redis nats irc tcpchat+tls redis+tls tcpchat+ws nats+ws tcpchat+ws-all nats+ws-all|tcpchat tcpchat+tls tcpchat+ws tcpchat+ws-all|tcpchat nats tcpchat+ws nats+ws tcpchat+ws-all nats+ws-all"
  "fanout-1x1000|fanout --viewers 1000 --senders 1 --messages 20000|fanout-1x1000|fanout --viewers 1000 --senders 1 --messages 2000|tcpchat redis nats irc tcpchat+tls redis+tls tcpchat+ws nats+ws tcpchat+ws-all nats+ws-all|tcpchat tcpchat+tls tcpchat+ws|tcpchat nats tcpchat+ws nats+ws tcpchat+ws-all nats+ws-all"
  "scrape-4x100|fanout --viewers 100 --senders 4 --messages 200000|scrape-4x100|fanout --viewers 100 --senders 4 --messages 20000|tcpchat tcpchat+scrape|tcpchat+scrape|tcpchat tcpchat+scrape"
  "durable-4x100|fanout --durable --viewers 100 --senders 4 --messages 25000|durable-4x100|fanout --durable --viewers 100 --senders 4 --messages 5000|tcpchat tcpchat-fsync redis nats|tcpchat"
  "durable-1x1000|fanout --durable --viewers 1000 --senders 1 --messages 10000|durable-1x1000|fanout --durable --viewers 1000 --senders 1 --messages 2000|tcpchat tcpchat-fsync redis nats|tcpchat"
  "latency-10x100msgs|fanout --viewers 100 --senders 10 --messages 1000 --rate 100|latency-10x100msgs|fanout --viewers 100 --senders 10 --messages 200 --rate 100|tcpchat tcpchat-nohistory tcpchat-fsync redis nats irc tcpchat+tls redis+tls|tcpchat tcpchat-nohistory tcpchat+tls"
  "catchup-100x10k|catchup --viewers 100 --events 10000|catchup-10x1k|catchup --viewers 10 --events 1000|tcpchat redis nats|tcpchat"
  "idle-19000|conns --viewers 19000|idle-2000|conns --viewers 2000"
)

# The cluster run's workloads (`run.sh --cluster`, which makes them the workloads),
# in the same format, the fifth field their targets: the fan-out shapes and the
# latency one on single-node tcpchat, NATS core pub/sub, JetStream (each viewer a
# push consumer of a file-stored stream) and tcpchat clusters of 2 and 3 nodes,
# smaller than the full run's so that JetStream's rounds stay short. The quick run
# takes the first one's small variant on cluster2+senders-all, if nats-server is
# installed.
cluster_targets="tcpchat nats jetstream cluster2 cluster2+senders-all cluster3 cluster3+senders-all"
cluster_workloads=(
  "cluster-4x100|fanout --viewers 100 --senders 4 --messages 20000|cluster-4x100|fanout --viewers 100 --senders 4 --messages 2000|$cluster_targets"
  "cluster-1x1000|fanout --viewers 1000 --senders 1 --messages 8000|cluster-1x1000|fanout --viewers 1000 --senders 1 --messages 800|$cluster_targets"
  "cluster-latency-10x100msgs|fanout --viewers 100 --senders 10 --messages 500 --rate 100|cluster-latency-10x100msgs|fanout --viewers 100 --senders 10 --messages 100 --rate 100|$cluster_targets"
)
