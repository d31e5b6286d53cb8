#!/usr/bin/env bash
# limpet vs nginx vs HAProxy, side by side (see bench/README.md).
#
# Each proxy runs ONE worker thread pinned to core 0; the backends, wrk and the WebSocket load
# client share core 1. Access logs are off and upstream keep-alive is on for all three.
# Traffic goes to 127.0.0.1 only. Every process started here is stopped on exit.
#
# All proxies run at once on their own ports (idle ones cost nothing), and the throughput runs are
# interleaved across proxies and repeated (--runs), so a slow spell of this machine does not land on one
# proxy only; the table shows the median. Idle-memory runs each get a freshly started proxy.
#
# Usage: bench/run.sh [--quick] [--runs N] [--only limpet,nginx,haproxy] [--limpet-bin PATH]
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
ALL_PROXIES=(limpet nginx haproxy)

usage() {
    cat <<EOF
usage: bench/run.sh [--quick] [--runs N] [--only LIST] [--limpet-bin PATH]

  --quick      3 s runs, one round, idle WebSocket memory at 2,000 connections only
  --runs N     rounds of the throughput runs; the table shows the median (default 3, 1 with --quick)
  --only LIST  comma-separated subset of: ${ALL_PROXIES[*]} (default: all that are installed)
  --limpet-bin PATH
               measure this limpet binary instead of building one (cargo build --release)

Environment: BENCH_KEEP=1 keeps the work directory (configs, logs, raw wrk output);
BENCH_QUIET_WAIT=SECONDS bounds the total wait for a quiet machine over the whole run (default 600).
EOF
}

QUICK=0
LIMPET_BIN=
RUNS=
ONLY=$(IFS=,; echo "${ALL_PROXIES[*]}")
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift ;;
        --runs=*) RUNS=${1#--runs=} ;;
        --only) ONLY=${2:?--only needs a list, e.g. --only nginx,haproxy}; shift ;;
        --only=*) ONLY=${1#--only=} ;;
        --limpet-bin) LIMPET_BIN=${2:?--limpet-bin needs a path}; shift ;;
        --limpet-bin=*) LIMPET_BIN=${1#--limpet-bin=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

PROXIES=()
IFS=, read -r -a wanted <<<"$ONLY"
for p in "${wanted[@]}"; do
    case $p in
        limpet | nginx | haproxy) PROXIES+=("$p") ;;
        "") ;;
        *) echo "bench: --only: unknown proxy '$p' (use ${ALL_PROXIES[*]})" >&2; exit 2 ;;
    esac
done

if ((QUICK)); then
    DURATION=3
    IDLE_COUNTS=(2000)
    RUNS=${RUNS:-1}
    IDLE_ROUNDS=1
else
    DURATION=10
    IDLE_COUNTS=(2000 9000)
    RUNS=${RUNS:-3}
    IDLE_ROUNDS=3
fi
# Idle connections are opened this many at a time, so the idle figure is what a held tunnel costs rather than
# what a burst of concurrent handshakes leaves in the allocator.
IDLE_OPEN_CONCURRENCY=32
# Tunnels held open under each idle measurement (see run_idle).
IDLE_BASE=200
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "bench: --runs must be a positive number" >&2; exit 2; }
CONNS=64
# Concurrent streams on the one HTTP/2 connection of the h2 row.
H2_STREAMS=64
WS_MSG_BYTES=32
PROXY_CORE=0
LOAD_CORE=1

say() { printf '%s\n' "$*" >&2; }
die() { say "bench: $*"; exit 1; }

for tool in wrk taskset python3 cargo getconf; do
    command -v "$tool" >/dev/null || die "$tool is required (Debian: apt-get install wrk util-linux python3)"
done
if (($(nproc) < 2)); then
    say "bench: only one core is available: proxies and load share core 0, figures are not comparable to a 2-core run"
    LOAD_CORE=0
fi

# A process may hold at most the hard open-file limit; a WebSocket tunnel takes two in the proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
MAX_TUNNELS=$(((NOFILE - 100) / 2))
CLK_TCK=$(getconf CLK_TCK)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/limpet-bench.XXXXXX")
chmod 755 "$WORK" # nginx's worker runs as nobody when started by root and must reach its temp dirs
RESULTS=$WORK/results.tsv
NOTES=$WORK/notes.txt
: >"$RESULTS"
: >"$NOTES"

PIDS=()
HOLD_FD=
BASE_FD=
ROUND=1
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $HOLD_FD ]]; then exec {HOLD_FD}>&-; fi
    if [[ -n $BASE_FD ]]; then exec {BASE_FD}>&-; fi
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then say "bench: work directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

note() {
    say "bench: $*"
    printf '%s\n' "$*" >>"$NOTES"
}
# Figures go to $PENDING first and reach $RESULTS only once their run is accepted (see measured).
PENDING=$WORK/pending.tsv
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$PENDING"; }
commit() { # commit [FLAG]: FLAG (e.g. "disturbed") is added to each figure's line
    awk -v flag="${1:-}" '{ print flag == "" ? $0 : $0 "\t" flag }' "$PENDING" >>"$RESULTS"
    : >"$PENDING"
}
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The fields of /proc/PID/stat after the command name, from the state on (field 3 in proc(5)).
stat_fields() {
    local s
    s=$(<"/proc/$1/stat") || return 1
    echo "${s##*) }"
}

proc_state() {
    local f
    f=$(stat_fields "$1" 2>/dev/null) || { echo X; return; }
    echo "${f%% *}"
}

# utime + stime of the whole process (all threads), in clock ticks.
cpu_ticks() {
    # shellcheck disable=SC2046
    set -- $(stat_fields "$1")
    echo $((${12} + ${13}))
}

# stime alone: the kernel's share (system calls, and the loopback packet delivery they trigger).
sys_ticks() {
    # shellcheck disable=SC2046
    set -- $(stat_fields "$1")
    echo "${13}"
}

# Percent of one core that the whole machine used over one second (call while the bench is idle).
machine_busy_pct() {
    local a b
    a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
    awk -v a="$a" -v b="$b" -v n="$(grep -c '^cpu[0-9]' /proc/stat)" 'BEGIN {
        split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2]
        printf "%d", (busy + idle > 0) ? 100 * n * busy / (busy + idle) : 0 }'
}

# Other work on the machine (a build, another benchmark) skews every figure. Before each run the bench
# waits up to a minute for the machine to be quiet; after it, it compares the machine's CPU time with its
# own processes' and runs again when something else took more than QUIET_PCT of a core meanwhile. All
# that waiting is bounded by QUIET_BUDGET seconds per bench run; once it is spent, runs go ahead as they
# are and the disturbed ones are named in the notes.
QUIET_PCT=15
QUIET_BUDGET=${BENCH_QUIET_WAIT:-600}
MAX_TRIES=3

wait_quiet() {
    local pct waited=0
    while pct=$(machine_busy_pct) && ((pct > QUIET_PCT)); do
        ((waited < 60 && QUIET_BUDGET > 0)) || return 1
        ((waited > 0)) || say "bench: waiting for the machine to be quiet (${pct}% of a core busy; ${QUIET_BUDGET}s of waiting left)"
        sleep 4
        waited=$((waited + 5))
        QUIET_BUDGET=$((QUIET_BUDGET - 5))
    done
}

# Ticks of user + nice + system + steal time on all cores.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $9 }' /proc/stat; }

# Ticks used by this bench: its live processes plus the children it has reaped (wrk, the ws client).
own_ticks() {
    local t=0 pid s
    local -A seen=()
    for pid in "${PIDS[@]}" "${P_PID[@]}"; do
        [[ -z ${seen[$pid]:-} && -r /proc/$pid/stat ]] || continue
        seen[$pid]=1
        t=$((t + $(cpu_ticks "$pid" 2>/dev/null || echo 0)))
    done
    s=$(<"/proc/$$/stat")
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo $((t + ${14} + ${15}))
}

# measured PROXY LABEL CMD...: run CMD (which records figures) until no other process disturbed it.
measured() {
    local proxy=$1 label=$2 try m0 o0 w0 m1 o1 w1 foreign flag
    shift 2
    for ((try = 1; try <= MAX_TRIES; try++)); do
        wait_quiet || true
        : >"$PENDING"
        flag=
        m0=$(machine_ticks) o0=$(own_ticks) w0=$EPOCHREALTIME
        "$@"
        m1=$(machine_ticks) o1=$(own_ticks) w1=$EPOCHREALTIME
        foreign=$(awk -v m="$((m1 - m0))" -v o="$((o1 - o0))" -v w0="$w0" -v w1="$w1" -v hz="$CLK_TCK" \
            'BEGIN { f = 100 * (m - o) / ((w1 - w0) * hz); printf "%d", f < 0 ? 0 : f }')
        ((foreign <= 5)) || say "bench: ($proxy $label: other processes used ${foreign}% of a core during the run)"
        ((foreign > QUIET_PCT)) || break
        if ((try < MAX_TRIES && QUIET_BUDGET > 0)); then
            say "bench: $proxy $label: other processes used ${foreign}% of a core during the run; running it again"
        else
            note "$proxy $label (round $ROUND): other processes used ${foreign}% of a core during the run (try $try)"
            flag=disturbed
            break
        fi
    done
    commit "$flag"
}

# The process's anonymous resident memory (heap, stacks): what connections cost. VmRSS also counts the pages
# of the binary and its libraries, which the kernel drops and faults back in on its own schedule.
rss_kib() { awk '/^RssAnon:/ { print $2 }' "/proc/$1/status"; }

# rss_settled PID: the anonymous RSS once it has stopped moving (two readings 0.5 s apart within 64 KiB,
# at most 10 s): allocators hand freed pages back over a second or so.
rss_settled() {
    local a b i
    a=$(rss_kib "$1")
    for ((i = 0; i < 20; i++)); do
        sleep 0.5
        b=$(rss_kib "$1")
        if (((a > b ? a - b : b - a) <= 64)); then
            break
        fi
        a=$b
    done
    echo "$b"
}

forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# run_waited CMD...: run CMD in the background and wait for it, so INT/TERM stop the bench at once.
run_waited() {
    local pid rc=0
    "$@" &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

stop_pid() {
    local pid=$1 i
    if kill "$pid" 2>/dev/null; then
        for ((i = 0; i < 100; i++)); do
            [[ $(proc_state "$pid") == [ZX] ]] && break
            sleep 0.05
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# wait_line FILE REGEX SECONDS [PID]: wait until FILE has a line matching REGEX (fails early if PID dies).
wait_line() {
    local file=$1 re=$2 secs=$3 pid=${4:-} i
    for ((i = 0; i < secs * 20; i++)); do
        grep -qE "$re" "$file" 2>/dev/null && return 0
        if [[ -n $pid && $(proc_state "$pid") == [ZX] ]]; then
            grep -qE "$re" "$file" 2>/dev/null && return 0
            return 1
        fi
        sleep 0.05
    done
    return 1
}

# wait_http PORT SECONDS PID: until GET http://127.0.0.1:PORT/ answers 200 "ok" (fails early if PID exits).
wait_http() {
    python3 - "$1" "$2" "$3" <<'EOF'
import sys, time, urllib.request
port, secs, pid = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.time() + secs
def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
while time.time() < deadline and alive():
    try:
        with opener.open(f"http://127.0.0.1:{port}/", timeout=1) as r:
            if r.status == 200 and r.read() == b"ok":
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.05)
sys.exit(1)
EOF
}

# start_listening NAME CMD...: start a bench server on the load core; sets STARTED_PID, STARTED_PORT.
start_listening() {
    local name=$1
    shift
    taskset -c "$LOAD_CORE" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_line "$WORK/$name.out" '^LISTENING [0-9]+' 10 "$STARTED_PID" ||
        die "$name did not start: $(tail -5 "$WORK/$name.err")"
    STARTED_PORT=$(awk '/^LISTENING / { print $2; exit }' "$WORK/$name.out")
}

fill_template() {
    sed -e "s|@PREFIX@|$2|g" -e "s|@PORT@|$PROXY_PORT|g" -e "s|@TLSPORT@|$PROXY_TLS_PORT|g" \
        -e "s|@CERT@|$WORK/tls/cert.pem|g" -e "s|@KEY@|$WORK/tls/key.pem|g" \
        -e "s|@CERTKEY@|$WORK/tls/cert-key.pem|g" -e "s|@BACKEND@|$BACKEND_PORT|g" \
        -e "s|@ECHO@|$ECHO_PORT|g" -e "s|@NOFILE@|$NOFILE|g" \
        -e "s|@WORKER_CONNECTIONS@|$((NOFILE - 100))|g" -e "s|@MAXCONN@|$MAX_TUNNELS|g" \
        "$1"
}

# The process that does the work: nginx's only worker, the process itself for the others.
nginx_worker() {
    local master=$1 kids i
    for ((i = 0; i < 100; i++)); do
        kids=$(pgrep -P "$master" 2>/dev/null || cat /proc/"$master"/task/*/children 2>/dev/null || true)
        # shellcheck disable=SC2086
        set -- $kids
        if (($# == 1)); then
            echo "$1"
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# start_proxy NAME: sets PROXY_MAIN (started), PROXY_PID (measured), PROXY_PORT, PROXY_TLS_PORT.
start_proxy() {
    local name=$1 dir
    dir=$(mktemp -d "$WORK/$name.XXXXXX")
    chmod 755 "$dir"
    PROXY_PORT=$(free_port)
    PROXY_TLS_PORT=$(free_port)
    case $name in
        limpet)
            fill_template "$BENCH/limpet.toml.tmpl" "$dir" >"$dir/limpet.toml"
            RUST_LOG=${RUST_LOG:-warn} taskset -c "$PROXY_CORE" "$LIMPET_BIN" -c "$dir/limpet.toml" \
                >"$dir/out.log" 2>&1 &
            ;;
        nginx)
            fill_template "$BENCH/nginx.conf.tmpl" "$dir" >"$dir/nginx.conf"
            taskset -c "$PROXY_CORE" nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" \
                >"$dir/out.log" 2>&1 &
            ;;
        haproxy)
            fill_template "$BENCH/haproxy.cfg.tmpl" "$dir" >"$dir/haproxy.cfg"
            # -W (master-worker) only where the run reloads it: SIGUSR2 to the master reloads.
            taskset -c "$PROXY_CORE" haproxy -db ${RELOADABLE:+-W} -f "$dir/haproxy.cfg" >"$dir/out.log" 2>&1 &
            ;;
    esac
    PROXY_MAIN=$!
    PIDS+=("$PROXY_MAIN")
    if ! wait_http "$PROXY_PORT" 15 "$PROXY_MAIN"; then
        say "bench: $name did not answer GET / on 127.0.0.1:$PROXY_PORT; its log:"
        tail -n 20 "$dir/out.log" "$dir"/error.log 2>/dev/null >&2 || true
        stop_pid "$PROXY_MAIN"
        return 1
    fi
    PROXY_PID=$PROXY_MAIN
    if [[ $name == nginx ]]; then
        PROXY_PID=$(nginx_worker "$PROXY_MAIN") || { say "bench: cannot find nginx's worker"; stop_pid "$PROXY_MAIN"; return 1; }
    fi
}

stop_proxy() { stop_pid "$PROXY_MAIN"; }

# run_wrk PROXY KEY PATH [wrk args...]: requests/s, p50/p99 (ms) and the proxy's CPU µs per request.
run_wrk() {
    local proxy=$1 key=$2 path=$3 out t0 t1 k0 k1 reqs rps p50 p99 errs non2xx
    shift 3
    out=$WORK/$proxy.$key.$ROUND.wrk
    t0=$(cpu_ticks "$PROXY_PID")
    k0=$(sys_ticks "$PROXY_PID")
    run_waited taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" \
        "http://127.0.0.1:$PROXY_PORT$path" >"$out" 2>&1 || true
    t1=$(cpu_ticks "$PROXY_PID")
    k1=$(sys_ticks "$PROXY_PID")
    read -r reqs rps p50 p99 errs non2xx < <(awk '
        function ms(v) {
            if (v ~ /us$/) return v * 0.001
            if (v ~ /ms$/) return v + 0
            if (v ~ /m$/) return v * 60000
            if (v ~ /s$/) return v * 1000
            return v + 0
        }
        / requests in / { reqs = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /Socket errors:/ { line = $0; sub(/.*errors:/, "", line); n = split(line, f, /[^0-9]+/); for (i = 1; i <= n; i++) errs += f[i] }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        END { printf "%d %s %s %s %d %d\n", reqs, (rps == "" ? 0 : rps), (p50 == "" ? 0 : p50), (p99 == "" ? 0 : p99), errs, non2xx }
    ' "$out")
    if ((reqs == 0)); then
        note "$proxy $key: wrk completed no request ($(tail -n 3 "$out" | tr '\n' ' '))"
        return 0
    fi
    record "$proxy" "${key}_rps" "$rps"
    record "$proxy" "${key}_p50" "$p50"
    record "$proxy" "${key}_p99" "$p99"
    record "$proxy" "${key}_cpu" "$(calc "($t1 - $t0) * 1000000 / $CLK_TCK / $reqs")"
    record "$proxy" "${key}_sys" "$(calc "($k1 - $k0) * 1000000 / $CLK_TCK / $reqs")"
    ((errs == 0)) || note "$proxy $key: $errs socket errors reported by wrk"
    ((non2xx == 0)) || note "$proxy $key: $non2xx non-2xx responses"
    say "bench: $proxy $key: $rps req/s, p50 ${p50} ms, p99 ${p99} ms"
}

# The p50 latency in ms of a wrk --latency output file (empty when it has none).
wrk_p50() {
    awk '/^ +50%/ { v = $2; if (v ~ /us$/) v = v * 0.001; else if (v ~ /ms$/) v = v + 0; else if (v ~ /s$/) v = v * 1000; print v; exit }' "$1"
}

# run_h2load PROXY KEY ARGS...: h2load against the proxy's TLS listener for DURATION: requests/s and the proxy's
# CPU µs per request (ARGS pick the protocol, connections and streams).
run_h2load() {
    local proxy=$1 key=$2 out t0 t1 k0 k1 done rps
    shift 2
    out=$WORK/$proxy.$key.$ROUND.h2load
    t0=$(cpu_ticks "$PROXY_PID")
    k0=$(sys_ticks "$PROXY_PID")
    run_waited taskset -c "$LOAD_CORE" h2load -D "$DURATION" "$@" "https://127.0.0.1:$PROXY_TLS_PORT/" \
        >"$out" 2>&1 || true
    t1=$(cpu_ticks "$PROXY_PID")
    k1=$(sys_ticks "$PROXY_PID")
    # "finished in 10.00s, 41234.50 req/s, …" and "requests: N total, N started, N done, N succeeded, …"
    rps=$(awk '/^finished in/ { sub(/,$/, "", $4); print $4 }' "$out")
    done=$(awk '/^requests:/ { print $8 }' "$out")
    if [[ -z $done || $done == 0 ]]; then
        note "$proxy $key: h2load completed no request ($(tail -n 3 "$out" | tr '\n' ' '))"
        return 0
    fi
    record "$proxy" "${key}_rps" "$rps"
    record "$proxy" "${key}_cpu" "$(calc "($t1 - $t0) * 1000000 / $CLK_TCK / $done")"
    record "$proxy" "${key}_sys" "$(calc "($k1 - $k0) * 1000000 / $CLK_TCK / $done")"
    grep -q ' 0 failed, 0 errored' "$out" || note "$proxy $key: $(grep '^requests:' "$out")"
    say "bench: $proxy $key: $rps req/s"
}

# run_direct_c1: the backend alone, one request at a time, for the TTFB overhead of this round.
run_direct_c1() {
    run_waited taskset -c "$LOAD_CORE" wrk -t1 -c1 -d"${DURATION}s" --latency "http://127.0.0.1:$BACKEND_PORT/" \
        >"$WORK/direct.ttfb.$ROUND.wrk" 2>&1 || true
}

# run_ttfb PROXY: one connection, one request at a time: the proxy's CPU per request, and its p50 latency above
# the backend's own (measured alone in the same round): what the proxy adds to the time to first byte.
run_ttfb() {
    local proxy=$1 p50 direct
    run_wrk "$proxy" ttfb / -c1
    p50=$(wrk_p50 "$WORK/$proxy.ttfb.$ROUND.wrk")
    direct=$(wrk_p50 "$WORK/direct.ttfb.$ROUND.wrk")
    if [[ -n $p50 && -n $direct ]]; then
        record "$proxy" ttfb_over "$(calc "($p50 - $direct) * 1000" 0)"
    else
        note "$proxy ttfb: no p50 latency to compare (proxy '${p50}', backend alone '${direct}')"
    fi
}

ws_url() { echo "ws://127.0.0.1:$PROXY_PORT/ws"; }

# run_ws_echo PROXY: echo messages/s over $CONNS connections, p99 round trip, CPU µs per message.
run_ws_echo() {
    local proxy=$1 out t0 t1 k0 k1 msgs rate p50 p99 errors
    out=$WORK/$proxy.ws.$ROUND.json
    t0=$(cpu_ticks "$PROXY_PID")
    k0=$(sys_ticks "$PROXY_PID")
    run_waited taskset -c "$LOAD_CORE" "$TOOLS/bench-ws-load" --url "$(ws_url)" --conns "$CONNS" \
        --duration "${DURATION}s" --size "$WS_MSG_BYTES" >"$out" 2>"$out.err" || true
    t1=$(cpu_ticks "$PROXY_PID")
    k1=$(sys_ticks "$PROXY_PID")
    if ! read -r msgs rate p50 p99 errors < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(r["msgs"], r["rate"], r["p50_us"] / 1000, r["p99_us"] / 1000, r["errors"])' "$out" 2>/dev/null); then
        note "$proxy ws: echo run failed: $(tail -n 3 "$out.err" | tr '\n' ' ')"
        return 0
    fi
    if ((msgs == 0)); then
        note "$proxy ws: no message echoed: $(tail -n 3 "$out.err" | tr '\n' ' ')"
        return 0
    fi
    record "$proxy" ws_rate "$rate"
    record "$proxy" ws_p50 "$p50"
    record "$proxy" ws_p99 "$p99"
    record "$proxy" ws_cpu "$(calc "($t1 - $t0) * 1000000 / $CLK_TCK / $msgs")"
    record "$proxy" ws_sys "$(calc "($k1 - $k0) * 1000000 / $CLK_TCK / $msgs")"
    ((errors == 0)) || note "$proxy ws: $errors connections failed during the echo run ($(tail -n 1 "$out.err"))"
    say "bench: $proxy ws echo: $rate msg/s, p99 $p99 ms"
}

# run_idle PROXY N: RSS growth per idle WebSocket tunnel, on a freshly started proxy.
# hold_idle N OUT FIFO: a load client that opens N idle tunnels, reports `OPEN …` to OUT and holds them until
# FIFO's writer closes; its pid in HELD_PID. The caller opens FIFO for writing (in its own shell, to keep the fd).
hold_idle() {
    mkfifo "$3"
    taskset -c "$LOAD_CORE" "$TOOLS/bench-ws-load" --url "$(ws_url)" --idle "$1" --hold-until-stdin-closes \
        --open-concurrency "$IDLE_OPEN_CONCURRENCY" <"$3" >"$2" 2>"$2.err" &
    HELD_PID=$!
    PIDS+=("$HELD_PID")
}

run_idle() {
    local proxy=$1 n=$2 slot=$3 out fifo before after line opened loader base_out base_fifo base_loader
    out=$WORK/$proxy.idle$n.out
    fifo=$WORK/$proxy.idle$n.fifo
    base_out=$WORK/$proxy.idle$n.base.out
    base_fifo=$WORK/$proxy.idle$n.base.fifo
    # Warm the proxy (buffers, pools, lazily built state) so the baseline holds no first-use cost.
    run_waited taskset -c "$LOAD_CORE" "$TOOLS/bench-ws-load" --url "$(ws_url)" --conns "$CONNS" --duration 1s \
        >/dev/null 2>&1 || true
    # A base of open tunnels, held through the measurement: the figure is what each further tunnel adds, not the
    # one-time state (allocator slabs, runtime tables) that a process's first tunnels bring.
    hold_idle "$IDLE_BASE" "$base_out" "$base_fifo"
    base_loader=$HELD_PID
    exec {BASE_FD}>"$base_fifo"
    wait_line "$base_out" '^OPEN ' 120 "$base_loader" ||
        note "$proxy idle $n: the base of $IDLE_BASE tunnels never opened ($(tail -n 2 "$base_out.err" | tr '\n' ' '))"
    before=$(rss_settled "$PROXY_PID")
    hold_idle "$n" "$out" "$fifo"
    loader=$HELD_PID
    exec {HOLD_FD}>"$fifo"
    if ! wait_line "$out" '^OPEN ' 300 "$loader"; then
        note "$proxy idle $n: the load client never reported ($(tail -n 2 "$out.err" | tr '\n' ' '))"
    else
        after=$(rss_settled "$PROXY_PID")
        line=$(grep -m1 '^OPEN ' "$out")
        read -r _ opened _ <<<"$line"
        if [[ $line == *" LIMIT "* || $line == *" ERROR "* ]]; then
            note "$proxy idle: stopped at $opened of $n connections: ${line#OPEN "$opened" }"
        fi
        if ((opened > 0)); then
            record "$proxy" "idle${slot}_kib" "$(calc "($after - $before) / $opened")"
            record "$proxy" "idle${slot}_n" "$opened"
            say "bench: $proxy idle: $opened tunnels, RSS $before -> $after KiB"
        fi
    fi
    exec {HOLD_FD}>&- {BASE_FD}>&-
    HOLD_FD=
    BASE_FD=
    stop_pid "$loader"
    stop_pid "$base_loader"
    rm -f "$fifo" "$base_fifo"
}

declare -A P_MAIN P_PID P_PORT P_TLS_PORT

# use_proxy NAME: point PROXY_MAIN / PROXY_PID / PROXY_PORT / PROXY_TLS_PORT at a proxy started by start_all.
use_proxy() {
    PROXY_MAIN=${P_MAIN[$1]}
    PROXY_PID=${P_PID[$1]}
    PROXY_PORT=${P_PORT[$1]}
    PROXY_TLS_PORT=${P_TLS_PORT[$1]}
}

start_all() {
    local p up=()
    for p in "${RUN[@]}"; do
        if ! start_proxy "$p"; then
            if [[ $p == limpet ]]; then note "limpet: not built (it did not serve the bench config)"; else note "$p: not started, column skipped"; fi
            continue
        fi
        P_MAIN[$p]=$PROXY_MAIN
        P_PID[$p]=$PROXY_PID
        P_PORT[$p]=$PROXY_PORT
        P_TLS_PORT[$p]=$PROXY_TLS_PORT
        version_of "$p" >>"$WORK/versions.txt"
        # One second of traffic first, so every proxy starts the measured runs with warm pools.
        run_waited taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$PROXY_PORT/" >/dev/null 2>&1 || true
        up+=("$p")
    done
    RUN=("${up[@]}")
}

# Throughput: every test on every proxy, round after round, the proxy order rotated each round.
throughput_rounds() {
    local round test i p n=${#RUN[@]}
    for ((round = 1; round <= RUNS; round++)); do
        ROUND=$round
        say "bench: --- round $round of $RUNS ---"
        run_direct_c1
        for test in get2 get64k close ttfb ws "${TLS_TESTS[@]}"; do
            for ((i = 0; i < n; i++)); do
                p=${RUN[$(((i + round - 1) % n))]}
                use_proxy "$p"
                case $test in
                    get2) measured "$p" "$test" run_wrk "$p" get2 / ;;
                    get64k) measured "$p" "$test" run_wrk "$p" get64k /64k ;;
                    close) measured "$p" "$test" run_wrk "$p" close / -H "Connection: close" ;;
                    ttfb) measured "$p" "$test" run_ttfb "$p" ;;
                    ws) measured "$p" "$test" run_ws_echo "$p" ;;
                    h2) measured "$p" "$test" run_h2load "$p" h2 -c1 -m"$H2_STREAMS" ;;
                    h1tls) measured "$p" "$test" run_h2load "$p" h1tls --h1 -c"$CONNS" -m1 ;;
                esac
            done
        done
    done
    for p in "${RUN[@]}"; do stop_pid "${P_MAIN[$p]}"; done
    P_PID=()
}

# The backend's count of connections accepted so far.
backend_connections() {
    python3 - "$BACKEND_PORT" <<'EOF'
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(f"http://127.0.0.1:{sys.argv[1]}/connections", timeout=5) as r:
    print(r.read().decode())
EOF
}

# Reloads under load: wrk for DURATION on a fresh proxy reloaded every 2 s; upstream connections the backend
# accepted meanwhile, per 1,000 requests (a proxy that keeps its pools across a reload opens none).
reload_runs() {
    local p out c0 c1 reqs sig i wrk_pid
    for p in "${RUN[@]}"; do
        RELOADABLE=1 start_proxy "$p" || { note "$p: start for the reload run failed"; continue; }
        run_waited taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$PROXY_PORT/" >/dev/null 2>&1 || true
        case $p in haproxy) sig=USR2 ;; *) sig=HUP ;; esac
        out=$WORK/$p.reload.wrk
        c0=$(backend_connections)
        taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PROXY_PORT/" >"$out" 2>&1 &
        wrk_pid=$!
        PIDS+=("$wrk_pid")
        for ((i = 2; i < DURATION; i += 2)); do
            sleep 2
            kill -"$sig" "$PROXY_MAIN" 2>/dev/null || true
        done
        wait "$wrk_pid" || true
        forget_pid "$wrk_pid"
        c1=$(backend_connections)
        reqs=$(awk '/ requests in / { print $1 }' "$out")
        if [[ -z $reqs || $reqs == 0 ]]; then
            note "$p reload: wrk completed no request"
        else
            record "$p" reload_conns "$(calc "($c1 - $c0) * 1000 / $reqs" 1)"
            say "bench: $p reload: $((c1 - c0)) upstream connections for $reqs requests"
        fi
        commit
        stop_proxy
    done
}

# Idle memory: a fresh proxy for each count, so memory freed by an earlier run cannot be reused.
idle_runs() {
    local p n slot r
    for ((r = 1; r <= IDLE_ROUNDS; r++)); do
        for p in "${RUN[@]}"; do
            slot=0
            for n in "${IDLE_COUNTS[@]}"; do
                slot=$((slot + 1))
                start_proxy "$p" || { note "$p: restart for the idle run failed"; continue; }
                wait_quiet || true
                run_idle "$p" "$n" "$slot"
                commit
                stop_proxy
            done
        done
    done
}

version_of() {
    case $1 in
        limpet)
            printf '%s (tree %s)\n' "$("$LIMPET_BIN" --version 2>/dev/null | awk 'NR == 1')" \
                "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo 'without commits')"
            ;;
        nginx) nginx -v 2>&1 | awk 'NR == 1' ;;
        haproxy) haproxy -v 2>/dev/null | awk 'NR == 1 { print $1, $2, $3 }' ;;
    esac
}

# --- idle counts against the open-file limit -------------------------------------------------
for i in "${!IDLE_COUNTS[@]}"; do
    n=${IDLE_COUNTS[$i]}
    if ((n + IDLE_BASE > MAX_TUNNELS)); then
        note "a process here may hold at most $NOFILE open files and a tunnel takes two in the proxy: idle run capped at $((MAX_TUNNELS - IDLE_BASE)) (above a base of $IDLE_BASE) instead of $n"
        IDLE_COUNTS[i]=$((MAX_TUNNELS - IDLE_BASE))
    fi
done
say "bench: open-file limit $NOFILE per process; a tunnel takes two in the proxy, so at most ~$MAX_TUNNELS tunnels"

# --- build ------------------------------------------------------------------------------------
say "bench: building bench/tools (release)"
(cd "$BENCH/tools" && cargo build --release --quiet) || die "bench/tools did not build"
TOOLS=${CARGO_TARGET_DIR:-$BENCH/tools/target}/release

RUN=()
for p in "${PROXIES[@]}"; do
    case $p in
        limpet)
            if [[ -n $LIMPET_BIN ]]; then
                [[ -x $LIMPET_BIN ]] || { note "limpet: not built ($LIMPET_BIN is not an executable)"; continue; }
                RUN+=("$p")
                continue
            fi
            say "bench: building limpet (release)"
            LIMPET_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/limpet
            if ! (cd "$ROOT" && cargo build --release --quiet) >"$WORK/limpet-build.log" 2>&1; then
                say "limpet: not built (cargo build --release failed; last lines:)"
                tail -n 5 "$WORK/limpet-build.log" >&2
                note "limpet: not built"
                continue
            fi
            ;;
        *)
            if ! command -v "$p" >/dev/null; then
                note "$p: not installed, column skipped"
                continue
            fi
            ;;
    esac
    RUN+=("$p")
done
((${#RUN[@]})) || die "no proxy to measure"

# --- TLS (the HTTP/2 rows) ---------------------------------------------------------------------
# One certificate for every proxy's TLS listener; the rows need h2load (Debian: nghttp2-client).
TLS_TESTS=()
mkdir -p "$WORK/tls"
if ! command -v h2load >/dev/null; then
    note "h2load not installed (Debian: nghttp2-client): HTTP/2 rows skipped"
elif ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" >/dev/null 2>&1; then
    note "openssl could not make a certificate: HTTP/2 rows skipped"
else
    TLS_TESTS=(h2 h1tls)
fi
# A self-signed pair is written either way: every proxy's config names it.
[[ -s $WORK/tls/cert.pem ]] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" >/dev/null 2>&1 || true
cat "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >"$WORK/tls/cert-key.pem" 2>/dev/null || true
chmod -R a+rX "$WORK/tls"

# --- backends (load core) ---------------------------------------------------------------------
start_listening backend "$TOOLS/bench-backend" --listen 127.0.0.1:0 --threads 1
BACKEND_PORT=$STARTED_PORT
start_listening ws-echo "$TOOLS/bench-ws-echo" --listen 127.0.0.1:0 --threads 1
ECHO_PORT=$STARTED_PORT

# limpet must accept the generated config before it gets a column.
if [[ " ${RUN[*]} " == *" limpet "* ]]; then
    PROXY_PORT=$(free_port)
    PROXY_TLS_PORT=$(free_port)
    fill_template "$BENCH/limpet.toml.tmpl" "$WORK" >"$WORK/limpet-check.toml"
    if ! "$LIMPET_BIN" --check -c "$WORK/limpet-check.toml" >"$WORK/limpet-check.log" 2>&1; then
        say "limpet: not built (the binary rejects the bench config:)"
        tail -n 5 "$WORK/limpet-check.log" >&2
        note "limpet: not built (config rejected)"
        keep=()
        for p in "${RUN[@]}"; do [[ $p == limpet ]] || keep+=("$p"); done
        RUN=("${keep[@]}")
    fi
fi

start_all
((${#RUN[@]})) || die "no proxy started"
throughput_rounds
reload_runs
idle_runs

# --- report -----------------------------------------------------------------------------------
python3 "$BENCH/report.py" --results "$RESULTS" --notes "$NOTES" --versions "$WORK/versions.txt" \
    --proxies "$(IFS=,; echo "${PROXIES[*]}")" --ran "$(IFS=,; echo "${RUN[*]}")" \
    --duration "$DURATION" --runs "$RUNS" --conns "$CONNS" --ws-bytes "$WS_MSG_BYTES" \
    --idle-counts "$(IFS=,; echo "${IDLE_COUNTS[*]}")" --nofile "$NOFILE" \
    --proxy-core "$PROXY_CORE" --load-core "$LOAD_CORE"
