#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with Rust and Node: installs what the tests need
# (Debian packages when run as root, the npm fixture, rustfmt/clippy), then runs formatting, lints and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests start for real: Redis (shared sticky store and the chat demo), Prometheus (scrape +
# promtool), Chromium (browser test), docker-compose (validating docker-compose.yml; no engine is needed), dnsmasq
# (the DNS server the membership tests change records on).
. scripts/lib/apt.sh
ensure_apt_packages redis-server prometheus chromium docker-compose dnsmasq-base

echo "==> npm ci (tests/socketio)"
(cd tests/socketio && npm ci --no-audit --no-fund --loglevel=error)

if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "==> docker-compose.yml, Prometheus and the container config"
docker-compose config -q
promtool check config config/prometheus.yml >/dev/null
docker_check=$(mktemp)
docker_token=$(mktemp)
echo "container-config-check-token-0123456789" > "$docker_token"
sed -e 's/chat\([123]\):3000/127.0.0.\1:3000/' -e "s|/run/secrets/limpet_admin_token|$docker_token|" \
    config/limpet.docker.toml > "$docker_check"
cargo run --quiet --bin limpet -- --check -c "$docker_check"
rm -f "$docker_check" "$docker_token"

echo "==> Kubernetes manifests (kubernetes-validate) and their limpet config"
./scripts/check-deploy.sh

echo "==> fuzzing (AFL++ via cargo afl; 20 s per parser)"
./scripts/fuzz.sh "${LIMPET_FUZZ_SECONDS:-20}"

echo "==> browser tests (headless Chromium: long-polling tabs over HTTP/1.1 and HTTP/2, WebSocket over HTTP/2)"
./scripts/browser-test.sh

echo "==> cargo test"
log=$(mktemp)
set +e
cargo test --all-targets --no-fail-fast -- --test-threads="${LIMPET_TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(awk '/^test result:/ {s += $4} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {s += $6} END {print s + 0}' "$log")
rm -f "$log"
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
