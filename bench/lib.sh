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
# (a target may carry +tls: the same server).
install_peers() {
  local missing="" target
  for target in "$@"; do
    case "${target%+tls}" in
      redis) command -v redis-server >/dev/null || missing="$missing redis-server" ;;
      nats) command -v nats-server >/dev/null || missing="$missing nats-server" ;;
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

# The arguments of `tcpchat-bench` naming target $1: tcpchat, redis, nats or irc,
# or tcpchat+tls or redis+tls for the same server over TLS.
target_args() {
  case "$1" in
    *+tls) echo "--target ${1%+tls} --tls" ;;
    *) echo "--target $1" ;;
  esac
}

# The arguments of `tcpchat-bench` for workload $1 ("quick" as $2 for the small
# variant), or nothing if there is no such workload.
workload_args() {
  local workload name full quick_name quick
  for workload in "${workloads[@]}"; do
    IFS='|' read -r name full quick_name quick <<<"$workload"
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

# Each workload: its name and `tcpchat-bench` arguments, then the same for the small
# variant of the quick run.
workloads=(
  "fanout-4x100|fanout --viewers 100 --senders 4 --messages 50000|fanout-4x100|fanout --viewers 100 --senders 4 --messages 5000"
  "fanout-1x1000|fanout --viewers 1000 --senders 1 --messages 20000|fanout-1x1000|fanout --viewers 1000 --senders 1 --messages 2000"
  "latency-10x100msgs|fanout --viewers 100 --senders 10 --messages 1000 --rate 100|latency-10x100msgs|fanout --viewers 100 --senders 10 --messages 200 --rate 100"
  "idle-19000|conns --viewers 19000|idle-2000|conns --viewers 2000"
)
