#!/usr/bin/env bash
# Load test (docs/performance.md): the release server against the floor server — the same axum + rustls stack
# answering a fixed AdmissionReview (examples/floor.rs) — on loopback over TLS with keep-alive, at 1, 8 and 64
# connections, HTTP/1.1 and HTTP/2, with examples/loadgen.rs. Then a long run (a million requests by default)
# that samples the server's RSS. Writes target/load/report.json and prints the table.
# Two more servers in the same run say where the difference goes: the floor that also reads the body as JSON
# (`floor --read-json`: the least any webhook that reads the review does) and ours without its decision log
# lines (`RUST_LOG=warn`); LADDER=0 leaves them out.
#
# Rounds: for each protocol and connection count the servers run one after the other ROUNDS times, the order
# rotated by one each round (ours floor json quiet, then floor json quiet ours, ...), so no server always goes
# first and the runs compared are adjacent in time. The table gives, per server, the median over the rounds of
# throughput, latency and server CPU per request, and the ratios ours/json (ours/floor with LADDER=0) and the
# differences ours - floor computed per round (same round) with their median and min..max over the rounds.
# Steal: /proc/stat is read just before and after each run; the share of CPU 0 (servers) and CPU 1 (load
# generator) time stolen by the hypervisor over the run is kept (runs/*.steal) and reported; a configuration
# with a run above 10% on CPU 0 is flagged "steal>10%".
#
# Run explicitly (cargo test does not): hack/load-test.sh
# Knobs (environment): ROUNDS (3), DURATION (per run, default 5s), WARMUP (1s), CONNS ("1 8 64"), PROTOS
# ("h1 h2"; empty: only the long run), SOAK_REQUESTS (1000000; 0 skips the long run), PIN (1: servers on CPU 0,
# load generator on CPU 1; 0: no pinning), OUT (target/load), BIN (a directory holding default-deny-guard, floor
# and loadgen release binaries: skip the cargo build and use those). Every run is bounded: DURATION per run, and
# the long run by a time limit of SOAK_LIMIT (600s) as well as its request count. The defaults take about
# 7 minutes plus the long run (3 rounds x 4 servers x 6 configurations x 6 s). Check `uptime` first: the load
# average should be under about 1 for numbers worth reporting.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS-"1 8 64"}
PROTOS=${PROTOS-"h1 h2"}
SOAK_REQUESTS=${SOAK_REQUESTS:-1000000}
SOAK_LIMIT=${SOAK_LIMIT:-600s}
PIN=${PIN:-1}
LADDER=${LADDER:-1}
OUT=${OUT:-target/load}
BIN=${BIN:-}
TARGET=${CARGO_TARGET_DIR:-target}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer, not '$ROUNDS'" >&2; exit 2; }

mkdir -p "$OUT/bin"
OUT=$(cd "$OUT" && pwd)
if [[ -n $BIN ]]; then
    echo "== binaries from $BIN (no build)"
    SRC=("$BIN/default-deny-guard" "$BIN/floor" "$BIN/loadgen")
else
    echo "== build (release): default-deny-guard, examples floor and loadgen"
    cargo build --release --locked --bin default-deny-guard --example floor --example loadgen
    SRC=("$TARGET/release/default-deny-guard" "$TARGET/release/examples/floor" "$TARGET/release/examples/loadgen")
fi
# Copies: a shared CARGO_TARGET_DIR (or BIN) may be rebuilt by someone else while this runs.
if [[ -z $BIN || $(cd "$BIN" && pwd -P) != $(cd "$OUT/bin" && pwd -P) ]]; then
    cp "${SRC[@]}" "$OUT/bin/"
fi
BIN="$OUT/bin"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ $PIN == 1 && $(nproc) -ge 2 ]]; then
    SERVER_CPUS=(taskset -c 0)
    CLIENT_CPUS=(taskset -c 1)
    PINNING="servers on CPU 0, load generator on CPU 1"
else
    SERVER_CPUS=()
    CLIENT_CPUS=()
    PINNING="none"
fi

# The address a server logged (`listening (HTTPS)`, JSON), waiting up to 30 s.
webhook_addr() {
    local log=$1
    for _ in $(seq 300); do
        local addr
        addr=$(grep -o '"message":"listening (HTTPS)"[^}]*' "$log" 2>/dev/null | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4 || true)
        [[ -z $addr ]] && addr=$(grep '"server":"webhook"' "$log" 2>/dev/null | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4 || true)
        if [[ -n $addr ]]; then echo "$addr"; return 0; fi
        sleep 0.1
    done
    echo "no listening line in $log:" >&2
    cat "$log" >&2
    return 1
}

kib() { awk -v f="$2" '$1 == f { print $2 }' "/proc/$1/status"; }

echo "== start the servers (pinning: $PINNING)"
mkdir -p "$WORK/ours" "$WORK/floor"
# The release server as deployed: JSON logs (one line per decision) to a file, no cluster.
(cd "$WORK/ours" && exec "${SERVER_CPUS[@]}" "$BIN/default-deny-guard" --log-format json serve --dev \
    --addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --namespace-cache off) 2>"$WORK/ours.log" &
PIDS+=($!)
OURS_PID=$!
OURS_ADDR=$(webhook_addr "$WORK/ours.log")
CA="$WORK/ours/certs/ca.crt"
(exec "${SERVER_CPUS[@]}" "$BIN/floor" --addr 127.0.0.1:0 --tls-cert "$WORK/ours/certs/tls.crt" \
    --tls-key "$WORK/ours/certs/tls.key") 2>"$WORK/floor.log" &
PIDS+=($!)
FLOOR_PID=$!
FLOOR_ADDR=$(webhook_addr "$WORK/floor.log")
SERVERS=(ours floor)
if [[ $LADDER == 1 ]]; then
    (exec "${SERVER_CPUS[@]}" "$BIN/floor" --addr 127.0.0.1:0 --read-json --tls-cert "$WORK/ours/certs/tls.crt" \
        --tls-key "$WORK/ours/certs/tls.key") 2>"$WORK/json.log" &
    PIDS+=($!)
    JSON_PID=$!
    JSON_ADDR=$(webhook_addr "$WORK/json.log")
    # Without its info lines this server does not log its address: it is given a free port instead.
    QUIET_ADDR=127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$WORK/quiet"
    cp -r "$WORK/ours/certs" "$WORK/quiet/"
    (cd "$WORK/quiet" && RUST_LOG=warn exec "${SERVER_CPUS[@]}" "$BIN/default-deny-guard" --log-format json serve \
        --dev --addr "$QUIET_ADDR" --metrics-addr 127.0.0.1:0 --namespace-cache off) 2>"$WORK/quiet.log" &
    PIDS+=($!)
    QUIET_PID=$!
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/${QUIET_ADDR%:*}/${QUIET_ADDR#*:}") 2>/dev/null && break
        sleep 0.1
    done
    SERVERS+=(json quiet)
fi
sleep 1
OURS_IDLE=$(kib "$OURS_PID" VmRSS:)
FLOOR_IDLE=$(kib "$FLOOR_PID" VmRSS:)
echo "ours  https://$OURS_ADDR pid $OURS_PID idle RSS ${OURS_IDLE} KiB"
echo "floor https://$FLOOR_ADDR pid $FLOOR_PID idle RSS ${FLOOR_IDLE} KiB"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# The cpu, cpu0 and cpu1 lines of /proc/stat.
cpu_stat() { grep -E '^cpu[01]? ' /proc/stat; }
# The share of each line's time stolen by the hypervisor between two cpu_stat snapshots, as JSON. Steal is the
# 8th value; the total is the first 8 (user .. steal: guest and guest_nice are already counted in user and nice).
steal_json() {
    awk 'NR == FNR { for (i = 2; i <= 9; i++) t0[$1] += $i; s0[$1] = $9; next }
         { t = 0; for (i = 2; i <= 9; i++) t += $i; d = t - t0[$1]
           out = out sep "\"" $1 "\": " (d > 0 ? ($9 - s0[$1]) / d : "null"); sep = ", " }
         END { print "{" out "}" }' <(echo "$1") <(echo "$2")
}

mkdir -p "$OUT/runs"
rm -f "$OUT"/runs/*.json "$OUT"/runs/*.steal
NSERVERS=${#SERVERS[@]}
for proto in $PROTOS; do
    for conns in $CONNS; do
        # Alternate the servers within each configuration, ROUNDS times, the order rotated by one each round, so
        # that drift on the machine hits all of them and no server always goes first.
        for round in $(seq "$ROUNDS"); do
            for i in $(seq 0 $((NSERVERS - 1))); do
                server=${SERVERS[$(((i + round - 1) % NSERVERS))]}
                case $server in
                    ours) addr=$OURS_ADDR pid=$OURS_PID ;;
                    floor) addr=$FLOOR_ADDR pid=$FLOOR_PID ;;
                    json) addr=$JSON_ADDR pid=$JSON_PID ;;
                    quiet) addr=$QUIET_ADDR pid=$QUIET_PID ;;
                esac
                flags=()
                [[ $proto == h2 ]] && flags+=(--http2)
                run="$OUT/runs/$server-$proto-$conns-r$round"
                before=$(cpu_stat)
                "${CLIENT_CPUS[@]}" "$BIN/loadgen" --url "https://$addr" --server-name localhost --ca "$CA" \
                    --connections "$conns" --duration "$DURATION" --warmup "$WARMUP" --server-pid "$pid" --quiet \
                    --label "$server r$round" "${flags[@]}" --json "$run.json"
                steal_json "$before" "$(cpu_stat)" >"$run.steal"
            done
        done
    done
done

if [[ $SOAK_REQUESTS -gt 0 ]]; then
    echo "== long run: $SOAK_REQUESTS requests at 64 connections (HTTP/1.1) against ours, RSS sampled every second"
    "${CLIENT_CPUS[@]}" "$BIN/loadgen" --url "https://$OURS_ADDR" --server-name localhost --ca "$CA" \
        --connections 64 --requests "$SOAK_REQUESTS" --duration-limit "$SOAK_LIMIT" --warmup 1s --interval 1s \
        --server-pid "$OURS_PID" --label soak --json "$OUT/runs/soak.json"
fi
OURS_HWM=$(kib "$OURS_PID" VmHWM:)
FLOOR_HWM=$(kib "$FLOOR_PID" VmHWM:)
LOG_BYTES=$(stat -c %s "$WORK/ours.log")
LOG_LINES=$(wc -l <"$WORK/ours.log")

python3 - "$OUT" "$OURS_IDLE" "$FLOOR_IDLE" "$OURS_HWM" "$FLOOR_HWM" "$PINNING" "$LOG_BYTES" "$LOG_LINES" \
    "$ROUNDS" "$DURATION" "$WARMUP" <<'EOF'
import glob, json, os, re, sys
from statistics import median
(out, ours_idle, floor_idle, ours_hwm, floor_hwm, pinning, log_bytes, log_lines,
 rounds_wanted, duration, warmup) = sys.argv[1:]
STEAL_FLAG = 0.10
# runs[(server, proto, conns)][round] = the loadgen JSON, with its steal shares under "steal".
runs = {}
for path in glob.glob(os.path.join(out, "runs", "*-r*.json")):
    m = re.fullmatch(r"(\w+)-(h1|h2)-(\d+)-r(\d+)\.json", os.path.basename(path))
    if not m:
        continue
    r = json.load(open(path))
    steal_path = path[:-5] + ".steal"
    r["steal"] = json.load(open(steal_path)) if os.path.exists(steal_path) else {}
    runs.setdefault((m[1], m[2], int(m[3])), {})[int(m[4])] = r
soak_path = os.path.join(out, "runs", "soak.json")
soak = json.load(open(soak_path)) if os.path.exists(soak_path) else None

def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": median(values), "min": min(values), "max": max(values), "per_round": values}

def summary(by_round):
    # One server in one configuration: medians over its rounds.
    rs = [by_round[k] for k in sorted(by_round)]
    def med(f):
        vals = [f(r) for r in rs]
        vals = [v for v in vals if v is not None]
        return median(vals) if vals else None
    srv = lambda r: r.get("server") or {}
    per_req = lambda key: (lambda r: srv(r)[key] * 1e6 / max(r["answered"], 1)
                           if srv(r).get(key) is not None else None)
    errors = {}
    for r in rs:
        for k, v in (r.get("errors") or {}).items():
            errors[k] = errors.get(k, 0) + v
    return {
        "rounds": len(rs),
        "rps": med(lambda r: r["throughput_rps"]), "p50_us": med(lambda r: r["latency_us"]["p50"]),
        "p99_us": med(lambda r: r["latency_us"]["p99"]), "p999_us": med(lambda r: r["latency_us"]["p999"]),
        "max_us": med(lambda r: r["latency_us"]["max"]),
        "cpu_s_per_10k": med(lambda r: srv(r).get("cpu_s_per_10k")),
        "user_us_per_request": med(per_req("cpu_user_s")), "system_us_per_request": med(per_req("cpu_system_s")),
        "client_cpu_s_per_10k": med(lambda r: r.get("client_cpu_s_per_10k")),
        "answered": sum(r["answered"] for r in rs), "failed": sum(r["failed"] for r in rs), "errors": errors,
        "steal_cpu0": spread([r["steal"].get("cpu0") for r in rs]),
        "steal_cpu1": spread([r["steal"].get("cpu1") for r in rs]),
        "per_round": [{"rps": r["throughput_rps"], "p50_us": r["latency_us"]["p50"], "p99_us": r["latency_us"]["p99"],
                       "p999_us": r["latency_us"]["p999"], "cpu_s_per_10k": srv(r).get("cpu_s_per_10k"),
                       "failed": r["failed"], "steal": r["steal"]} for r in rs],
    }

def per_round(a, b, f):
    # f(run of a, run of b) over the rounds both have: the same round, adjacent in time.
    return spread([f(a[k], b[k]) for k in sorted(set(a) & set(b))])

div = lambda x, y: x / y if y else None
rows = []
for proto in ["h1", "h2"]:
    for conns in [1, 8, 64]:
        o, f = runs.get(("ours", proto, conns)), runs.get(("floor", proto, conns))
        if not o or not f:
            continue
        row = {"protocol": proto, "connections": conns, "rounds": len(set(o) & set(f))}
        servers = {w: runs[(w, proto, conns)] for w in ("ours", "floor", "json", "quiet") if (w, proto, conns) in runs}
        for w, by_round in servers.items():
            row[w] = summary(by_round)
        rps_f = per_round(o, f, lambda a, b: div(a["throughput_rps"], b["throughput_rps"]))
        p99_f = per_round(o, f, lambda a, b: div(a["latency_us"]["p99"], b["latency_us"]["p99"]))
        # Old readers: "ratio" keeps rps and p99 (ours / floor), now the medians of the per-round ratios.
        row["ratio"] = {"rps": rps_f and rps_f["median"], "p99": p99_f and p99_f["median"],
                        "rps_rounds": rps_f, "p99_rounds": p99_f}
        if "json" in servers:
            j = servers["json"]
            rps_j = per_round(o, j, lambda a, b: div(a["throughput_rps"], b["throughput_rps"]))
            p99_j = per_round(o, j, lambda a, b: div(a["latency_us"]["p99"], b["latency_us"]["p99"]))
            row["ratio_to_json"] = {"rps": rps_j and rps_j["median"], "p99": p99_j and p99_j["median"],
                                    "rps_rounds": rps_j, "p99_rounds": p99_j}
        row["ours_minus_floor_us"] = {
            "p50": per_round(o, f, lambda a, b: a["latency_us"]["p50"] - b["latency_us"]["p50"]),
            "p99": per_round(o, f, lambda a, b: a["latency_us"]["p99"] - b["latency_us"]["p99"]),
        }
        all_runs = [r for by_round in servers.values() for r in by_round.values()]
        row["steal"] = {c: spread([r["steal"].get(c) for r in all_runs]) for c in ("cpu0", "cpu1", "cpu")}
        row["steal_over_10pct"] = any((r["steal"].get("cpu0") or 0) > STEAL_FLAG for r in all_runs)
        # Where the difference goes: server CPU per request (µs) and throughput relative to the floor, of the
        # floor, the floor reading JSON, ours without decision log lines, and ours: medians over the rounds (the
        # throughput ratio: the median of the per-round ratios to the floor).
        ladder = {}
        for w in ("floor", "json", "quiet", "ours"):
            s = row.get(w)
            if s and s["cpu_s_per_10k"] is not None:
                ratio = per_round(servers[w], f, lambda a, b: div(a["throughput_rps"], b["throughput_rps"]))
                ladder[w] = {"rps": s["rps"], "p99_us": s["p99_us"], "cpu_us_per_request": s["cpu_s_per_10k"] * 100,
                             "user_us_per_request": s["user_us_per_request"],
                             "system_us_per_request": s["system_us_per_request"],
                             "rps_ratio_to_floor": ratio and ratio["median"], "failed": s["failed"]}
        if len(ladder) == 4:
            row["ladder"] = ladder
        rows.append(row)
trend = None
if soak and soak["timeline"]:
    pts = [(p["answered"], p["rss_kib"]) for p in soak["timeline"] if p.get("rss_kib")]
    if len(pts) >= 3:
        half = pts[len(pts) // 2:]
        n = len(half)
        mx = sum(x for x, _ in half) / n
        my = sum(y for _, y in half) / n
        den = sum((x - mx) ** 2 for x, _ in half)
        slope = sum((x - mx) * (y - my) for x, y in half) / den if den else 0.0
        trend = {
            "requests": soak["answered"], "failed": soak["failed"], "rps": soak["throughput_rps"],
            "rss_kib_first": pts[0][1], "rss_kib_middle": pts[len(pts) // 2][1], "rss_kib_last": pts[-1][1],
            "rss_kib_max": max(y for _, y in pts),
            "slope_kib_per_100k_requests_second_half": slope * 100_000,
            "samples": pts,
        }
report = {
    "load_average_at_end": open("/proc/loadavg").read().split()[:3],
    "pinning": pinning,
    "method": {"rounds": int(rounds_wanted), "duration": duration, "warmup": warmup,
               "order": "servers rotated by one each round", "statistic": "median over rounds; ratios per round",
               "steal_flag_cpu0": STEAL_FLAG},
    "rss_kib": {"ours_idle": int(ours_idle), "floor_idle": int(floor_idle), "ours_peak_hwm": int(ours_hwm),
                "floor_peak_hwm": int(floor_hwm)},
    "decision_log": {"bytes": int(log_bytes), "lines": int(log_lines),
                     "bytes_per_line": int(log_bytes) / max(int(log_lines), 1)},
    "table": rows,
    "soak": trend,
}
json.dump(report, open(os.path.join(out, "report.json"), "w"), indent=2)

def rng(s, fmt):
    if not s:
        return "-"
    return f"{fmt(s['median'])} ({fmt(s['min'])}..{fmt(s['max'])})"
r2 = lambda x: f"{x:.2f}"
us = lambda x: f"{round(x):d}"
pct = lambda x: f"{100 * x:.1f}"
ladder_run = any("json" in r for r in rows)
versus = "json" if ladder_run else "floor"
print()
print(f"{rounds_wanted} rounds of {duration} after {warmup} of warm-up per server; "
      f"medians over rounds, ratios and differences per round: median (min..max)")
print(f"{'proto':5} {'conns':>5} | {'ours req/s':>10} " + (f"{'json req/s':>10} " if ladder_run else "") +
      f"{'floor req/s':>11} | {'thr ours/' + versus:>20} | {'p99 ours/' + versus:>20} | "
      f"{'p50 ours-floor µs':>17} | {'p99 ours-floor µs':>19} | {'steal cpu0 %':>12}")
for r in rows:
    rat = r["ratio_to_json"] if ladder_run and "ratio_to_json" in r else r["ratio"]
    steal = r["steal"]["cpu0"]
    print(f"{r['protocol']:5} {r['connections']:>5} | {r['ours']['rps']:>10.0f} " +
          (f"{r['json']['rps'] if 'json' in r else float('nan'):>10.0f} " if ladder_run else "") +
          f"{r['floor']['rps']:>11.0f} | {rng(rat['rps_rounds'], r2):>20} | {rng(rat['p99_rounds'], r2):>20} | "
          f"{rng(r['ours_minus_floor_us']['p50'], us):>17} | {rng(r['ours_minus_floor_us']['p99'], us):>19} | "
          f"{(pct(steal['median']) + ' (' + pct(steal['max']) + ')') if steal else '-':>12}"
          + ("  steal>10%" if r["steal_over_10pct"] else ""))
    for w in ("ours", "floor", "json", "quiet"):
        if w in r and r[w]["failed"]:
            print(f"      {w}: {r[w]['failed']} failed: {r[w]['errors']}")
print()
names = [w for w in ("ours", "json", "floor", "quiet") if any(w in r for r in rows)]
print("medians over rounds, ms: " + "/".join(names))
print(f"{'proto':5} {'conns':>5} | {'p50':>23} | {'p99':>23} | {'p99.9':>23} | {'CPU s/10k':>23}")
for r in rows:
    cell = lambda key, scale, fmt: "/".join(
        fmt(r[w][key] / scale) if w in r and r[w][key] is not None else "-" for w in names)
    print(f"{r['protocol']:5} {r['connections']:>5} | {cell('p50_us', 1000, r2):>23} | {cell('p99_us', 1000, r2):>23} | "
          f"{cell('p999_us', 1000, r2):>23} | {cell('cpu_s_per_10k', 1, r2):>23}")
ladders = [r for r in rows if "ladder" in r]
if ladders:
    print()
    print("where the difference goes: server CPU per request in µs, user + kernel (throughput / the floor's), medians;")
    print("json = the floor reading the body as JSON, quiet = ours without decision log lines")
    print(f"{'proto':5} {'conns':>5} | {'floor':>17} | {'json':>17} | {'quiet':>17} | {'ours':>17}")
    for r in ladders:
        cells = [f"{r['ladder'][w]['user_us_per_request']:4.1f}+{r['ladder'][w]['system_us_per_request']:<4.1f} "
                 f"({r['ladder'][w]['rps_ratio_to_floor']:.2f})" for w in ("floor", "json", "quiet", "ours")]
        print(f"{r['protocol']:5} {r['connections']:>5} | " + " | ".join(f"{c:>17}" for c in cells))
print(f"RSS: ours idle {int(ours_idle) / 1024:.1f} MiB, peak (VmHWM) {int(ours_hwm) / 1024:.1f} MiB; "
      f"floor idle {int(floor_idle) / 1024:.1f} MiB, peak {int(floor_hwm) / 1024:.1f} MiB")
if trend:
    print(f"long run: {trend['requests']} requests at {trend['rps']:.0f} req/s, {trend['failed']} failed; RSS "
          f"{trend['rss_kib_first'] / 1024:.1f} -> {trend['rss_kib_middle'] / 1024:.1f} -> "
          f"{trend['rss_kib_last'] / 1024:.1f} MiB (max {trend['rss_kib_max'] / 1024:.1f}); second-half slope "
          f"{trend['slope_kib_per_100k_requests_second_half']:+.1f} KiB per 100k requests")
print(f"decision log: {log_lines} lines, {int(log_bytes) / max(int(log_lines), 1):.0f} bytes each; pinning: {pinning}; "
      f"load average at the end: {' '.join(report['load_average_at_end'])}")
print(f"report: {os.path.join(out, 'report.json')}")
EOF
