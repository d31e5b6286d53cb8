#!/usr/bin/env bash
# The browser tests: headless Chromium opens the example chat through limpet in three tabs forced onto long-polling
# and sees a message reach all three (tests/browser/chat.test.js); then, over HTTP/2 on a TLS listener signed by a
# test CA, ten polling tabs at once, a WebSocket tab, and the same ten over HTTP/1.1 for comparison
# (tests/browser/h2.test.js). Installs what it needs (Debian's chromium, redis-server, openssl and certutil when
# run as root, the npm packages), builds limpet, and runs the tests with node's test runner, one at a time.
# Screenshots go to target/browser-test/ (LIMPET_ARTIFACTS overrides).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/apt.sh
ensure_apt_packages chromium redis-server openssl libnss3-tools

for dir in examples/chat tests/browser; do
  echo "==> npm ci ($dir)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
done

echo "==> cargo build (limpet)"
cargo build --bin limpet
export LIMPET_BIN="${CARGO_TARGET_DIR:-target}/debug/limpet"

echo "==> browser test"
exec node --test --test-concurrency=1 tests/browser/chat.test.js tests/browser/h2.test.js
