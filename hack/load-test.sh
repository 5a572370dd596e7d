#!/usr/bin/env bash
# Load test (docs/performance.md): the release server against the floor server — the same axum + rustls stack
# answering a fixed AdmissionReview (examples/floor.rs) — on loopback over TLS with keep-alive, at 1, 8 and 64
# connections, HTTP/1.1 and HTTP/2, with examples/loadgen.rs. Then a long run (a million requests by default)
# that samples the server's RSS. Writes target/load/report.json and prints the table.
# Two more servers in the same run say where the difference goes: the floor that also reads the body as JSON
# (`floor --read-json`: the least any webhook that reads the review does) and ours without its decision log
# lines (`RUST_LOG=warn`); LADDER=0 leaves them out.
#
# Run explicitly (cargo test does not): hack/load-test.sh
# Knobs (environment): DURATION (per run, default 10s), WARMUP (2s), CONNS ("1 8 64"), PROTOS ("h1 h2"; empty:
# only the long run), SOAK_REQUESTS (1000000; 0 skips the long run), PIN (1: servers on CPU 0, load generator on
# CPU 1; 0: no pinning), OUT (target/load). Every run is bounded: DURATION per run, and the long run by a time
# limit of SOAK_LIMIT (600s) as well as its request count. Check `uptime` first: the load average should be
# under about 1 for numbers worth reporting.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS-"1 8 64"}
PROTOS=${PROTOS-"h1 h2"}
SOAK_REQUESTS=${SOAK_REQUESTS:-1000000}
SOAK_LIMIT=${SOAK_LIMIT:-600s}
PIN=${PIN:-1}
LADDER=${LADDER:-1}
OUT=${OUT:-target/load}
TARGET=${CARGO_TARGET_DIR:-target}

echo "== build (release): default-deny-guard, examples floor and loadgen"
cargo build --release --locked --bin default-deny-guard --example floor --example loadgen
mkdir -p "$OUT/bin"
# Copies: a shared CARGO_TARGET_DIR may be rebuilt by someone else while this runs.
cp "$TARGET/release/default-deny-guard" "$TARGET/release/examples/floor" "$TARGET/release/examples/loadgen" "$OUT/bin/"
OUT=$(cd "$OUT" && pwd)
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

mkdir -p "$OUT/runs"
rm -f "$OUT"/runs/*.json
for proto in $PROTOS; do
    for conns in $CONNS; do
        # Alternate the servers within each configuration, so that drift on the machine hits all of them.
        for server in "${SERVERS[@]}"; do
            case $server in
                ours) addr=$OURS_ADDR pid=$OURS_PID ;;
                floor) addr=$FLOOR_ADDR pid=$FLOOR_PID ;;
                json) addr=$JSON_ADDR pid=$JSON_PID ;;
                quiet) addr=$QUIET_ADDR pid=$QUIET_PID ;;
            esac
            flags=()
            [[ $proto == h2 ]] && flags+=(--http2)
            "${CLIENT_CPUS[@]}" "$BIN/loadgen" --url "https://$addr" --server-name localhost --ca "$CA" \
                --connections "$conns" --duration "$DURATION" --warmup "$WARMUP" --server-pid "$pid" --quiet \
                --label "$server" "${flags[@]}" --json "$OUT/runs/$server-$proto-$conns.json"
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

python3 - "$OUT" "$OURS_IDLE" "$FLOOR_IDLE" "$OURS_HWM" "$FLOOR_HWM" "$PINNING" "$LOG_BYTES" "$LOG_LINES" <<'EOF'
import glob, json, os, sys
out, ours_idle, floor_idle, ours_hwm, floor_hwm, pinning, log_bytes, log_lines = sys.argv[1:]
runs = {}
for path in glob.glob(os.path.join(out, "runs", "*.json")):
    name = os.path.basename(path)[:-5]
    runs[name] = json.load(open(path))
rows = []
for proto in ["h1", "h2"]:
    for conns in [1, 8, 64]:
        o, f = runs.get(f"ours-{proto}-{conns}"), runs.get(f"floor-{proto}-{conns}")
        if not o or not f:
            continue
        row = {"protocol": proto, "connections": conns}
        for who, r in [("ours", o), ("floor", f)]:
            row[who] = {
                "rps": r["throughput_rps"], "p50_us": r["latency_us"]["p50"], "p99_us": r["latency_us"]["p99"],
                "p999_us": r["latency_us"]["p999"], "max_us": r["latency_us"]["max"],
                "cpu_s_per_10k": (r.get("server") or {}).get("cpu_s_per_10k"),
                "client_cpu_s_per_10k": r.get("client_cpu_s_per_10k"),
                "answered": r["answered"], "failed": r["failed"], "errors": r["errors"],
            }
        row["ratio"] = {
            "rps": o["throughput_rps"] / f["throughput_rps"] if f["throughput_rps"] else None,
            "p99": o["latency_us"]["p99"] / f["latency_us"]["p99"] if f["latency_us"]["p99"] else None,
        }
        # Where the difference goes: server CPU per request (µs) and throughput relative to the floor, of the
        # floor, the floor reading JSON, ours without decision log lines, and ours.
        ladder = {}
        for who in ("floor", "json", "quiet", "ours"):
            r = runs.get(f"{who}-{proto}-{conns}")
            if r and (r.get("server") or {}).get("cpu_s_per_10k") is not None:
                answered = max(r["answered"], 1)
                ladder[who] = {"rps": r["throughput_rps"], "p99_us": r["latency_us"]["p99"],
                               "cpu_us_per_request": r["server"]["cpu_s_per_10k"] * 100,
                               "user_us_per_request": r["server"]["cpu_user_s"] * 1e6 / answered,
                               "system_us_per_request": r["server"]["cpu_system_s"] * 1e6 / answered,
                               "rps_ratio_to_floor": r["throughput_rps"] / f["throughput_rps"],
                               "failed": r["failed"]}
        if len(ladder) == 4:
            row["ladder"] = ladder
        rows.append(row)
soak = runs.get("soak")
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
    "rss_kib": {"ours_idle": int(ours_idle), "floor_idle": int(floor_idle), "ours_peak_hwm": int(ours_hwm),
                "floor_peak_hwm": int(floor_hwm)},
    "decision_log": {"bytes": int(log_bytes), "lines": int(log_lines),
                     "bytes_per_line": int(log_bytes) / max(int(log_lines), 1)},
    "table": rows,
    "soak": trend,
}
json.dump(report, open(os.path.join(out, "report.json"), "w"), indent=2)

def ms(us):
    return f"{us / 1000:.2f}"
print()
print(f"{'proto':5} {'conns':>5} | {'ours req/s':>10} {'floor req/s':>11} {'ratio':>5} | "
      f"{'p50 ms o/f':>11} | {'p99 ms o/f':>11} {'ratio':>5} | {'p99.9 ms o/f':>13} | {'max ms o/f':>13} | "
      f"{'CPU s/10k o/f':>13}")
for r in rows:
    o, f = r["ours"], r["floor"]
    cpu = lambda x: f"{x['cpu_s_per_10k']:.2f}" if x["cpu_s_per_10k"] is not None else "-"
    print(f"{r['protocol']:5} {r['connections']:>5} | {o['rps']:>10.0f} {f['rps']:>11.0f} {r['ratio']['rps']:>5.2f} | "
          f"{ms(o['p50_us']):>5}/{ms(f['p50_us']):<5} | {ms(o['p99_us']):>5}/{ms(f['p99_us']):<5} "
          f"{r['ratio']['p99']:>5.2f} | {ms(o['p999_us']):>6}/{ms(f['p999_us']):<6} | "
          f"{ms(o['max_us']):>6}/{ms(f['max_us']):<6} | {cpu(o):>6}/{cpu(f):<6}")
    for who in ("ours", "floor"):
        if r[who]["failed"]:
            print(f"      {who}: {r[who]['failed']} failed: {r[who]['errors']}")
ladders = [r for r in rows if "ladder" in r]
if ladders:
    print()
    print("where the difference goes: server CPU per request in µs, user + kernel (throughput / the floor's);")
    print("json = the floor reading the body as JSON, quiet = ours without decision log lines")
    print(f"{'proto':5} {'conns':>5} | {'floor':>17} | {'json':>17} | {'quiet':>17} | {'ours':>17}")
    for r in ladders:
        cells = [f"{r['ladder'][w]['user_us_per_request']:4.1f}+{r['ladder'][w]['system_us_per_request']:<4.1f} "
                 f"({r['ladder'][w]['rps_ratio_to_floor']:.2f})" for w in ("floor", "json", "quiet", "ours")]
        print(f"{r['protocol']:5} {r['connections']:>5} | " + " | ".join(f"{c:>17}" for c in cells))
        for w in ("json", "quiet"):
            if r["ladder"][w]["failed"]:
                print(f"      {w}: {r['ladder'][w]['failed']} failed")
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
