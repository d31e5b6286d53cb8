#!/bin/bash
# Redis commands per 1,000 sticky requests through one limpet with `store = "redis://…"`: one known session, then
# one well-formed sid no instance knows, 1,000 polling POSTs each, counted with INFO commandstats.
#   bench/redis-commands.sh [LIMPET_BINARY]     (default target/release/limpet; run from the repository root)
set -eu
BIN=${1:-target/release/limpet}
D=$(mktemp -d)
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RP=$(free_port); LP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --pidfile "$D/redis.pid" >/dev/null
node tests/socketio/node.js --id n1 --port 0 --no-parent-watch > "$D/n1.out" &
NODE=$!
for _ in $(seq 100); do grep -q LISTENING "$D/n1.out" && break; sleep 0.1; done
NP=$(awk '{print $2}' "$D/n1.out")
cat > "$D/limpet.toml" <<TOML
[[server]]
listen = ["127.0.0.1:$LP"]
[[server.location]]
path = "/"
proxy_pass = "app"
[upstream.app]
balance = "sid"
[upstream.app.sticky]
session_ttl = "1h"
store = "redis://127.0.0.1:$RP/0"
[[upstream.app.server]]
addr = "127.0.0.1:$NP"
TOML
"$BIN" -c "$D/limpet.toml" 2>"$D/limpet.log" &
LIMPET=$!
URL="http://127.0.0.1:$LP/socket.io/?EIO=4&transport=polling"
for _ in $(seq 100); do curl -sf -o /dev/null "$URL" && break; sleep 0.1; done
sid=$(curl -s "$URL" | sed -E 's/.*"sid":"([^"]+)".*/\1/')
count() {
  local n
  n=$(redis-cli -p "$RP" INFO commandstats | grep -E "^cmdstat_$1:" | sed -E "s/^cmdstat_[a-z]+:calls=([0-9]+).*/\\1/" || true)
  echo "${n:-0}"
}
redis-cli -p "$RP" CONFIG RESETSTAT >/dev/null
for _ in $(seq 1000); do curl -s -o /dev/null -X POST --data 3 "$URL&sid=$sid"; done
echo "known session, 1000 requests: SET=$(count set) GET=$(count get)"
redis-cli -p "$RP" CONFIG RESETSTAT >/dev/null
for _ in $(seq 1000); do curl -s -o /dev/null -X POST --data 3 "$URL&sid=Zm9yZ2VkLXNlc3Npb24tMQ"; done
echo "one unknown sid, 1000 requests: SET=$(count set) GET=$(count get)"
kill $LIMPET $NODE; kill "$(cat "$D/redis.pid")"; rm -rf "$D"
