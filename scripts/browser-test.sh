#!/usr/bin/env bash
# The browser test (tests/browser/chat.test.js): headless Chromium opens the example chat through limpet in three
# tabs forced onto long-polling and sees a message reach all three. Installs what it needs (Debian's chromium and
# redis-server when run as root, the npm packages), builds limpet, and runs the test with node's test runner.
# Screenshots go to target/browser-test/ (LIMPET_ARTIFACTS overrides).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/apt.sh
ensure_apt_packages chromium redis-server

for dir in examples/chat tests/browser; do
  echo "==> npm ci ($dir)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
done

echo "==> cargo build (limpet)"
cargo build --bin limpet
export LIMPET_BIN="${CARGO_TARGET_DIR:-target}/debug/limpet"

echo "==> browser test"
exec node --test tests/browser/chat.test.js
