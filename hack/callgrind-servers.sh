#!/usr/bin/env bash
# User-space instructions per request of the four servers of hack/load-test.sh — the floor, the floor reading the
# body as JSON (`floor --read-json`), ours without decision log lines (`RUST_LOG=warn`) and ours — under the
# load test's mix at 8 HTTP/1.1 connections: the load test's attribution ladder without its noise (callgrind
# counts instructions, whatever else the machine does; the kernel's share, about half of the floor's time, is
# not counted). Each server is run twice under callgrind, for N1 and N2 requests; the difference divided by
# N2 - N1 leaves out start-up and the TLS handshakes. About a minute.
# Usage: hack/callgrind-servers.sh [OUTDIR]   (default target/callgrind-servers; needs valgrind)
# Knobs: N1 (2000), N2 (12000), CONNS (8).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/callgrind-servers}
N1=${N1:-2000}
N2=${N2:-12000}
CONNS=${CONNS:-8}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release --locked --bin default-deny-guard --example floor --example loadgen
mkdir -p "$OUT/bin"
cp "$TARGET/release/default-deny-guard" "$TARGET/release/examples/floor" "$TARGET/release/examples/loadgen" "$OUT/bin/"
OUT=$(cd "$OUT" && pwd)
BIN="$OUT/bin"
cd "$OUT"
rm -rf certs
# A development certificate for all four (serve --dev writes it on first start).
"$BIN/default-deny-guard" serve --dev --addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --namespace-cache off \
    2>/dev/null &
pid=$!
for _ in $(seq 100); do [[ -s certs/ca.crt && -s certs/tls.key ]] && break; sleep 0.1; done
kill -TERM "$pid"
wait "$pid" || true

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Instructions of one server process over `requests` requests, start to SIGTERM.
instructions() {
    local who=$1 requests=$2 port filter=info
    port=$(free_port)
    local serve=("$BIN/default-deny-guard" --log-format json serve --dev --addr "127.0.0.1:$port"
        --metrics-addr 127.0.0.1:0 --namespace-cache off)
    local cmd
    case $who in
        floor) cmd=("$BIN/floor" --addr "127.0.0.1:$port" --tls-cert certs/tls.crt --tls-key certs/tls.key) ;;
        json) cmd=("$BIN/floor" --addr "127.0.0.1:$port" --read-json --tls-cert certs/tls.crt --tls-key certs/tls.key) ;;
        quiet) cmd=("${serve[@]}") filter=warn ;;
        ours) cmd=("${serve[@]}") ;;
    esac
    RUST_LOG=$filter valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$who.$requests" "${cmd[@]}" \
        2>"$OUT/valgrind.$who.$requests.log" >/dev/null &
    local server=$!
    for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    "$BIN/loadgen" --url "https://127.0.0.1:$port" --server-name localhost --ca certs/ca.crt --connections "$CONNS" \
        --requests "$requests" --duration-limit 600s --warmup 0s --quiet --label "$who" >"$OUT/loadgen.$who.$requests.txt"
    kill -TERM "$server"
    wait "$server" || true
    grep -q "answered=$requests failed=0" "$OUT/loadgen.$who.$requests.txt" || {
        echo "$who: not every request answered:" >&2
        cat "$OUT/loadgen.$who.$requests.txt" >&2
        return 1
    }
    awk '/Collected/ {print $4}' "$OUT/valgrind.$who.$requests.log"
}

printf '%-8s %14s %14s\n' server 'per request' 'beyond floor'
floor=
for who in floor json quiet ours; do
    a=$(instructions "$who" "$N1")
    b=$(instructions "$who" "$N2")
    per=$(( (b - a) / (N2 - N1) ))
    floor=${floor:-$per}
    printf '%-8s %14d %14d\n' "$who" "$per" $(( per - floor ))
done | tee "$OUT/summary.txt"
