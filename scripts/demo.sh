#!/usr/bin/env bash
# The demo fleet: Redis, three chat nodes (examples/chat) on 127.0.0.1:3001-3003 and limpet running
# config/limpet.toml on 127.0.0.1:8080 (admin on 127.0.0.1:9100). Installs what it needs first (redis-server when
# run as root, the chat's npm packages) and builds limpet.
#
#   scripts/demo.sh               start, print the URLs, stay in the foreground; Ctrl-C stops everything
#   scripts/demo.sh --background  start, print the URLs and return
#   scripts/demo.sh --stop        stop what a --background run started
#
# Running it again first stops what an earlier run left. A Redis already answering on 127.0.0.1:6379 is reused
# (and left running). Logs and pid files: target/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=$ROOT/target/demo
LIMPET=${CARGO_TARGET_DIR:-$ROOT/target}/release/limpet
CONFIG=config/limpet.toml
REDIS_PORT=6379
NODE_PORTS=(3001 3002 3003)
LISTEN_PORT=8080
ADMIN_PORT=9100
START_TIMEOUT=60 # seconds each component gets to come up

say() { echo "==> $*"; }
die() {
  echo "demo: $*" >&2
  exit 1
}

usage() {
  sed -n '2,12s/^# \{0,1\}//p' "$0"
}

mode=foreground
case "${1:-}" in
  "") ;;
  --background) mode=background ;;
  --stop) mode=stop ;;
  -h | --help)
    usage
    exit 0
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac

# --- processes -----------------------------------------------------------------------------------------------

# True while $1 runs (a zombie does not count).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# The pid recorded in $STATE/$1.pid, if that process is still the one the demo started.
recorded_pid() {
  local file=$STATE/$1.pid pid marker
  [ -f "$file" ] || return 1
  read -r pid marker <"$file" || return 1
  alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" && echo "$pid"
}

# start NAME MARKER CMD...: runs CMD in its own session (so a Ctrl-C reaches only this script), logging to
# $STATE/NAME.log; MARKER is a string of its command line that identifies it later.
start() {
  local name=$1 marker=$2
  shift 2
  setsid "$@" </dev/null >"$STATE/$name.log" 2>&1 &
  local pid=$! i
  echo "$pid $marker" >"$STATE/$name.pid"
  # Until it has exec'd the command, the pid's command line is this shell's, which recorded_pid (used to stop
  # it) would take for a process that is gone: wait for the exec, or for it to die.
  for ((i = 0; i < 50; i++)); do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" && return 0
    alive "$pid" || return 0
    sleep 0.1
  done
}

# Stops the named processes: SIGTERM to all, then SIGKILL to any still running after $1 seconds.
stop_named() {
  local grace=$1 name pid
  shift
  local pids=()
  for name in "$@"; do
    if pid=$(recorded_pid "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$STATE/$name.pid"
  done
  local deadline=$((SECONDS + grace))
  for pid in "${pids[@]}"; do
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}

stop_all() {
  [ -d "$STATE" ] || return 0
  # limpet lets open tunnels finish; the nodes going away at the same time closes them.
  stop_named 40 limpet chat1 chat2 chat3
  stop_named 10 redis
}

# --- probes --------------------------------------------------------------------------------------------------

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The status code of GET $2 on 127.0.0.1:$1, or nothing.
# shellcheck disable=SC2317 # reached through wait_for
http_status() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$2" "$1" >&3
    read -r -t 3 _ status _ <&3 && echo "$status"
  ) 2>/dev/null || true
}

# The pid this run started as NAME (no command-line check: between fork and exec, and during exec itself, the
# command line is not yet, or briefly not, the command's; the pid is ours all along).
started_pid() {
  local pid _
  read -r pid _ <"$STATE/$1.pid" 2>/dev/null && echo "$pid"
}

# wait_for NAME WHAT CHECK...: runs CHECK until it succeeds, NAME's process dies, or START_TIMEOUT passes.
wait_for() {
  local name=$1 what=$2 pid
  shift 2
  pid=$(started_pid "$name") || die "no pid recorded for $name"
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$@"; do
    if ! alive "$pid"; then
      echo "demo: $name exited before $what; its log ($STATE/$name.log):" >&2
      tail -n 20 "$STATE/$name.log" >&2 || true
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "demo: no $what within ${START_TIMEOUT}s; $name's log ($STATE/$name.log):" >&2
      tail -n 20 "$STATE/$name.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

# shellcheck disable=SC2317 # reached through wait_for
page_ok() { [ "$(http_status "$LISTEN_PORT" /)" = 200 ]; }

# limpet's /healthz answers 200 once its first health checks are done and it accepts.
# shellcheck disable=SC2317 # reached through wait_for
limpet_ready() { [ "$(http_status "$ADMIN_PORT" /healthz)" = 200 ]; }

# --- setup ---------------------------------------------------------------------------------------------------

install_packages() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    die "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
  fi
}

check_tools() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    die "Node.js (18 or later) and npm are needed"
  fi
  command -v cargo >/dev/null 2>&1 || die "Rust (cargo) is needed: https://rustup.rs"
}

install_chat() {
  local dir=examples/chat
  if [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
    return 0
  fi
  say "npm ci ($dir)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}

build_limpet() {
  say "cargo build --release"
  cargo build --release --bin limpet
}

# --- start ---------------------------------------------------------------------------------------------------

start_redis() {
  if port_open "$REDIS_PORT"; then
    if [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then
      say "reusing the Redis on 127.0.0.1:$REDIS_PORT"
      return 0
    fi
    die "127.0.0.1:$REDIS_PORT is taken by something that is not Redis"
  fi
  say "redis-server on 127.0.0.1:$REDIS_PORT"
  start redis redis-server redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$STATE"
  wait_for redis "Redis on port $REDIS_PORT" port_open "$REDIS_PORT"
}

start_nodes() {
  local i port
  for i in 1 2 3; do
    port=${NODE_PORTS[$((i - 1))]}
    say "chat node n$i on 127.0.0.1:$port"
    NODE_ID=n$i PORT=$port HOST=127.0.0.1 REDIS_URL=redis://127.0.0.1:$REDIS_PORT \
      start "chat$i" "$ROOT/examples/chat/server.js" node "$ROOT/examples/chat/server.js"
  done
  for i in 1 2 3; do
    wait_for "chat$i" "chat node n$i on port ${NODE_PORTS[$((i - 1))]}" port_open "${NODE_PORTS[$((i - 1))]}"
  done
}

start_limpet() {
  say "limpet -c $CONFIG (127.0.0.1:$LISTEN_PORT, admin 127.0.0.1:$ADMIN_PORT)"
  start limpet "$LIMPET" "$LIMPET" -c "$CONFIG"
  # Ready means the first health checks are done: the nodes that passed them take traffic from the first request.
  wait_for limpet "limpet ready (GET http://127.0.0.1:$ADMIN_PORT/healthz -> 200)" limpet_ready
  wait_for limpet "chat page through limpet (GET http://127.0.0.1:$LISTEN_PORT/ -> 200)" page_ok
}

check_ports_free() {
  local port
  for port in "${NODE_PORTS[@]}" "$LISTEN_PORT" "$ADMIN_PORT"; do
    if port_open "$port"; then
      die "127.0.0.1:$port is already in use (another demo? scripts/demo.sh --stop stops a --background one)"
    fi
  done
}

if [ "$mode" = stop ]; then
  say "stopping the demo"
  stop_all
  exit 0
fi

check_tools
install_packages
install_chat
build_limpet

mkdir -p "$STATE"
stop_all
check_ports_free
trap 'stop_all' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_redis
start_nodes
start_limpet

echo
echo "Chat:    http://127.0.0.1:$LISTEN_PORT/"
echo "Metrics: http://127.0.0.1:$ADMIN_PORT/metrics"
echo
echo "Open the chat in several tabs: each shows the node that served the page, the node holding its Socket.IO"
echo "session and the transport (add ?transport=polling to force long-polling). Logs: $STATE/"

if [ "$mode" = background ]; then
  trap - EXIT INT TERM
  echo "Stop with: scripts/demo.sh --stop"
  exit 0
fi

echo "Ctrl-C stops everything."
# Returns when any component exits (or a signal arrives: the traps above stop the rest).
set +e
wait -n
status=$?
set -e
for name in redis chat1 chat2 chat3 limpet; do
  if [ -f "$STATE/$name.pid" ] && ! recorded_pid "$name" >/dev/null; then
    echo "demo: $name exited (status $status); its log ($STATE/$name.log):" >&2
    tail -n 20 "$STATE/$name.log" >&2 || true
  fi
done
exit 1
