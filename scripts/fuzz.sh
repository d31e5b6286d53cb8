#!/usr/bin/env bash
# Coverage-guided fuzzing of limpet's parsers with AFL++ through `cargo afl` (works on the stable toolchain).
# Builds every target in fuzz/ and runs each for a bounded time.
#
#   scripts/fuzz.sh [seconds per target]      (default 60)
#
# Targets: config (the TOML loader), engineio (handshake sid), sid (query/cookie extraction, percent-decoding),
# proxy_protocol (PROXY v1/v2), head_scan (raw request-head framing counts), upstream_response (a server's
# response head and chunked body as the upstream reader takes them). A crash fails the run; it is kept in
# fuzz/out/<target>/default/crashes/ and belongs in tests/parsers_prop.rs::fuzz_regressions once fixed.
# The config target runs in a network namespace of its own: the loader resolves host names, and a fuzzer must
# not send DNS queries.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
targets=(config engineio sid proxy_protocol head_scan upstream_response)

if ! cargo afl --version >/dev/null 2>&1; then
  echo "==> cargo install cargo-afl (builds AFL++)"
  cargo install cargo-afl --version 0.18.2 --locked
fi
afl_help=$(cargo afl fuzz -h 2>&1 || true)
case "$afl_help" in
  *afl-fuzz*) ;;
  *) cargo afl config --build ;;
esac

echo "==> cargo afl build --release (fuzz/)"
cargo afl build --release --quiet

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_SKIP_CRASHES=1 AFL_QUIET=1
failed=0
for t in "${targets[@]}"; do
  runner=()
  if [ "$t" = config ]; then
    if unshare -n true 2>/dev/null; then
      runner=(unshare -n)
    elif unshare -rn true 2>/dev/null; then
      runner=(unshare -rn)
    else
      echo "==> $t: skipped (no network namespace available: the loader could resolve names)"
      continue
    fi
  fi
  out="out/$t"
  rm -rf "$out"
  mkdir -p out
  echo "==> fuzz $t for ${secs}s"
  "${runner[@]}" cargo afl fuzz -V "$secs" -i "seeds/$t" -o "$out" "target/release/$t" >"$out.log" 2>&1 || {
    echo "afl-fuzz failed for $t:"; tail -20 "$out.log"; failed=1; continue;
  }
  stats="$out/default/fuzzer_stats"
  execs=$(awk -F: '/^execs_done/ {gsub(/ /,"",$2); print $2}' "$stats")
  paths=$(awk -F: '/^corpus_count/ {gsub(/ /,"",$2); print $2}' "$stats")
  crashes=$(find "$out/default/crashes" -type f -name 'id:*' | wc -l)
  hangs=$(find "$out/default/hangs" -type f -name 'id:*' | wc -l)
  echo "    $t: $execs execs, $paths inputs in corpus, $crashes crashes, $hangs hangs"
  if [ "$crashes" -gt 0 ]; then
    failed=1
    for f in "$out"/default/crashes/id:*; do echo "    crash: $f"; done
  fi
done
exit "$failed"
