#!/usr/bin/env python3
"""Prints bench/run.sh's results: an aligned table, then the same as markdown for bench/RESULTS.md."""

import argparse
import datetime
import os
import platform

# key, label, better ("higher" / "lower"), decimals
ROWS = [
    ("get2_rps", "GET 2 B keep-alive, req/s", "higher", 0),
    ("get2_p50", "  p50 latency, ms", "lower", 3),
    ("get2_p99", "  p99 latency, ms", "lower", 3),
    ("get2_cpu", "  proxy CPU, us/req", "lower", 2),
    ("get2_sys", "    of which kernel, us/req", "lower", 2),
    ("get64k_rps", "GET 64 KiB keep-alive, req/s", "higher", 0),
    ("get64k_p99", "  p99 latency, ms", "lower", 3),
    ("get64k_cpu", "  proxy CPU, us/req", "lower", 2),
    ("get64k_sys", "    of which kernel, us/req", "lower", 2),
    ("close_rps", "GET 2 B new conn per request, req/s", "higher", 0),
    ("close_p99", "  p99 latency, ms", "lower", 3),
    ("close_cpu", "  proxy CPU, us/req", "lower", 2),
    ("close_sys", "    of which kernel, us/req", "lower", 2),
    ("ttfb_over", "GET 2 B one at a time (c1): latency added, us", "lower", 0),
    ("ttfb_cpu", "  proxy CPU, us/req", "lower", 2),
    ("ttfb_sys", "    of which kernel, us/req", "lower", 2),
    ("h2_rps", "GET 2 B over HTTP/2 + TLS, 1 conn x {h2_streams} streams, req/s", "higher", 0),
    ("h2_cpu", "  proxy CPU, us/req", "lower", 2),
    ("h2_sys", "    of which kernel, us/req", "lower", 2),
    ("h1tls_rps", "GET 2 B over HTTP/1.1 + TLS, {conns} conns, req/s", "higher", 0),
    ("h1tls_cpu", "  proxy CPU, us/req", "lower", 2),
    ("h1tls_sys", "    of which kernel, us/req", "lower", 2),
    ("reload_conns", "upstream conns per 1,000 req, reload every 2 s", "lower", 1),
    ("ws_rate", "WS echo {conns} conns {ws_bytes} B, msg/s", "higher", 0),
    ("ws_p99", "  p99 round trip, ms", "lower", 3),
    ("ws_cpu", "  proxy CPU, us/msg", "lower", 2),
    ("ws_sys", "    of which kernel, us/msg", "lower", 2),
    ("idle1_kib", "anon RSS per idle WS at {idle1}, KiB", "lower", 1),
    ("idle2_kib", "anon RSS per idle WS at {idle2}, KiB", "lower", 1),
]


def load(path):
    """(proxy, key) -> (samples, disturbed): the clean samples (one per round) when there are any,
    else the samples taken while other processes were busy, flagged as such."""
    clean, noisy = {}, {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            try:
                value = float(parts[2])
            except ValueError:
                continue
            target = noisy if len(parts) > 3 and parts[3] == "disturbed" else clean
            target.setdefault((parts[0], parts[1]), []).append(value)
    out = {k: (v, True) for k, v in noisy.items()}
    out.update({k: (v, False) for k, v in clean.items()})
    return out


def median(values):
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def spread(values):
    """Half the range over the median, in percent: how far apart the rounds were."""
    m = median(values)
    if len(values) < 2 or not m:
        return None
    return 50.0 * (max(values) - min(values)) / abs(m)


def read_lines(path):
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def fmt(value, decimals):
    if value is None:
        return "-"
    if decimals == 0:
        return f"{value:,.0f}"
    return f"{value:,.{decimals}f}"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build(args):
    samples = load(args.results)
    proxies = [p for p in args.proxies.split(",") if p]
    ran = set(p for p in args.ran.split(",") if p)
    idle = [n for n in args.idle_counts.split(",") if n]
    names = {"conns": args.conns, "ws_bytes": args.ws_bytes, "h2_streams": 64,
             "idle1": f"{int(idle[0]):,}" if idle else "-",
             "idle2": f"{int(idle[1]):,}" if len(idle) > 1 else "-"}
    ratio_cols = [p for p in proxies if p != "nginx"] if "nginx" in ran else []

    header = ["figure"] + [p + ("" if p in ran else " (not run)") for p in proxies]
    header += [f"{p}/nginx" for p in ratio_cols]
    rows = []
    for key, label, better, decimals in ROWS:
        if key.startswith("idle2") and len(idle) < 2:
            continue
        found = {p: samples.get((p, key), ([], False)) for p in proxies}
        if not any(v for v, _ in found.values()):
            continue
        values = {p: median(v) if v else None for p, (v, _) in found.items()}
        row = [label.format(**names) + (" (higher is better)" if better == "higher" and not label.startswith(" ") else "")]
        for p in proxies:
            runs, disturbed = found[p]
            cell = fmt(values[p], decimals)
            s = spread(runs) if runs else None
            if s is not None:
                cell += f" ±{s:.0f}%"
            if disturbed:
                cell += " (!)"
            row.append(cell)
        base = values.get("nginx")
        for p in ratio_cols:
            v = values.get(p)
            row.append(f"{v / base:.2f}x" if v is not None and base else "-")
        rows.append(row)
    return header, rows


def aligned(header, rows):
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    def line(r):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "  ".join(cells).rstrip()
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def markdown(header, rows):
    out = ["| " + " | ".join(header) + " |",
           "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    for r in rows:
        out.append("| " + " | ".join([r[0].strip() if not r[0].startswith(" ") else "&nbsp;&nbsp;" + r[0].strip()] + r[1:]) + " |")
    return "\n".join(out)


def print_report(table, setup, notes, notes_title=None):
    """The table, the paragraph on how it was measured, and the notes as a list."""
    print()
    print(table)
    print()
    print(setup)
    if notes:
        print()
        if notes_title:
            print(notes_title)
        for n in notes:
            print(f"- {n}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--notes")
    ap.add_argument("--versions")
    ap.add_argument("--proxies", required=True)
    ap.add_argument("--ran", default="")
    ap.add_argument("--duration", default="10")
    ap.add_argument("--runs", default="1")
    ap.add_argument("--conns", default="64")
    ap.add_argument("--ws-bytes", default="32")
    ap.add_argument("--idle-counts", default="")
    ap.add_argument("--nofile", default="?")
    ap.add_argument("--proxy-core", default="0")
    ap.add_argument("--load-core", default="1")
    args = ap.parse_args()

    header, rows = build(args)
    notes = read_lines(args.notes)
    versions = read_lines(args.versions)
    setup = [
        f"{datetime.date.today().isoformat()}, {cpu_model()}, Linux {platform.release()}, {os.cpu_count()} cores.",
        f"Each proxy: one worker thread on core {args.proxy_core}; backends, wrk and the WebSocket client on core {args.load_core}.",
        f"wrk -t1 -c{args.conns} -d{args.duration}s; access logs off; upstream keep-alive on.",
        f"TLS rows: h2load -D {args.duration} to each proxy's TLS listener (ECDSA P-256, TLS 1.3), HTTP/2 with"
        f" -c1 -m64, HTTP/1.1 with --h1 -c{args.conns} -m1; the upstream side is plain HTTP/1.1 as elsewhere.",
    ]
    if args.runs != "1":
        setup.append(f"Median of {args.runs} interleaved rounds, ± half their range.")
    setup.append("Proxy CPU = utime+stime from /proc/PID/stat over the run / requests (or messages); kernel = stime"
                 " alone (system calls and the loopback delivery they set off).")
    setup.append("Idle WS memory = growth of RssAnon (heap and stacks; the binary's file pages left out) from before"
                 " to after opening the connections, above a base of 200 tunnels held open throughout, 32 handshakes"
                 " at a time, each reading taken once it has settled; median of the idle rounds.")
    setup.append("Runs during which other processes took over 15% of a core are left out when a clean run of the"
                 " same figure exists; (!) marks a figure that had none.")
    setup.append(f"Open-file limit {args.nofile} per process (a tunnel takes two).")
    setup = " ".join(setup)
    if versions:
        setup += " Versions: " + "; ".join(versions) + "."

    print_report(aligned(header, rows), setup, notes, "Notes:")
    print()
    print("----- markdown for bench/RESULTS.md -----")
    print_report(markdown(header, rows), setup, notes)

if __name__ == "__main__":
    main()
