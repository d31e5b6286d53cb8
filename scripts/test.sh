#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with Rust and Node: installs what the tests need
# (Debian packages when run as root, the npm fixture, rustfmt/clippy), then runs formatting, lints and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests start for real: Redis (shared sticky store), Prometheus (scrape + promtool).
APT_PACKAGES=(redis-server prometheus)
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

echo "==> npm ci (tests/socketio)"
(cd tests/socketio && npm ci --no-audit --no-fund --loglevel=error)

if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "==> cargo test"
cargo test --all-targets -- --test-threads="${LIMPET_TEST_THREADS:-2}"
