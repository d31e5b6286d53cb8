#!/usr/bin/env bash
# The browser test (tests/browser/chat.test.js): headless Chromium opens the example chat through limpet in three
# tabs forced onto long-polling and sees a message reach all three. Installs what it needs (Debian's chromium and
# redis-server when run as root, the npm packages), builds limpet, and runs the test with node's test runner.
# Screenshots go to target/browser-test/ (LIMPET_ARTIFACTS overrides).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(chromium redis-server)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "==> missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

for dir in examples/chat tests/browser; do
  echo "==> npm ci ($dir)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
done

echo "==> cargo build (limpet)"
cargo build --bin limpet
export LIMPET_BIN="${CARGO_TARGET_DIR:-target}/debug/limpet"

echo "==> browser test"
exec node --test tests/browser/chat.test.js
