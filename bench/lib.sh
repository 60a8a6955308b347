# Shared by bench/run.sh and bench/profile.sh (sourced, not run): the peers'
# installation, starting and stopping one server pinned to a core, and the
# workloads. Expects to be sourced from the repository's root.

server_cpu=0
load_cpu=1
if [ "$(nproc)" -lt 2 ]; then
  echo "bench: only one CPU: server and load generator will share it" >&2
  load_cpu=0
fi

# Installs whichever of the given targets' servers is missing, from Debian's packages.
install_peers() {
  local missing="" target
  for target in "$@"; do
    case "$target" in
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

bin=target/release/tcpchat
bench_bin=target/release/tcpchat-bench
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

# Starts a fresh server of kind $1 on the next port, pinned to $server_cpu; sets
# $port and $server_pid and returns once it accepts connections.
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
    *)
      echo "bench: unknown target $1 (tcpchat, redis, nats or irc)" >&2
      return 1
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

# The arguments of `tcpchat bench` for workload $1 against the server just started
# ("quick" as $2 for the small variant), or nothing if there is no such workload.
workload_args() {
  local workload name full quick_name quick
  for workload in "${workloads[@]}"; do
    IFS='|' read -r name full quick_name quick <<<"$workload"
    if [ "$name" = "$1" ]; then
      if [ "${2:-}" = quick ]; then
        name=$quick_name
        full=$quick
      fi
      echo "$full --addr 127.0.0.1:$port --pid $server_pid --label $name"
      return 0
    fi
  done
}

# Each workload: its name and `tcpchat bench` arguments, then the same for the small
# variant of the quick run.
workloads=(
  "fanout-4x100|fanout --viewers 100 --senders 4 --messages 50000|fanout-4x100|fanout --viewers 100 --senders 4 --messages 5000"
  "fanout-1x1000|fanout --viewers 1000 --senders 1 --messages 20000|fanout-1x1000|fanout --viewers 1000 --senders 1 --messages 2000"
  "latency-10x100msgs|fanout --viewers 100 --senders 10 --messages 1000 --rate 100|latency-10x100msgs|fanout --viewers 100 --senders 10 --messages 200 --rate 100"
  "idle-19000|conns --viewers 19000|idle-2000|conns --viewers 2000"
)
