#!/usr/bin/env bash
# Fault test (README, "Never the reason a cluster breaks"): the release server under a steady load of well-formed
# reviews (examples/loadgen.rs, the mix of docs/performance.md) while
#   - its certificate is rotated twice the way a Secret volume changes (a swap of the `..data` symlink), and a third
#     time to a broken pair (a key that does not match), which must be rejected with the previous pair kept;
#   - a burst of malformed and oversized requests arrives (hack/fault-clients.py burst);
#   - stalled connections are held open: no TLS handshake, a handshake and no request, half a request
#     (hack/fault-clients.py stall);
#   - and SIGTERM arrives while the load is on (with --shutdown-delay, as the chart's shutdown pause).
# Then it reports requests sent, answered and failed, the burst's answers, the reloads, and the server's RSS before
# and after, as a table and as JSON (target/fault/report.json). Exit 0 only if no well-formed request failed, every
# malformed one got a 4xx, both rotations were served, the broken pair was rejected, and serve exited 0.
#
# Run explicitly (about a minute after the release build): hack/fault-test.sh   Knobs: DURATION (40), CONNS (8).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-40}
CONNS=${CONNS:-8}
OUT=${OUT:-target/fault}
TARGET=${CARGO_TARGET_DIR:-target}

echo "== build (release): default-deny-guard, examples/loadgen"
cargo build --release --locked --bin default-deny-guard --example loadgen
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BIN=$OUT/default-deny-guard LOADGEN=$OUT/loadgen
cp "$TARGET/release/default-deny-guard" "$BIN"
cp "$TARGET/release/examples/loadgen" "$LOADGEN"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '[fault %5.1fs] %s\n' "$(awk "BEGIN{print $(date +%s.%N) - $T0}")" "$*"; }
T0=$(date +%s.%N)

# Three certificate generations and a caBundle that trusts all of them, as during a CA rotation.
for v in v1 v2 v3; do
  "$BIN" certs --out "$WORK/$v" --service default-deny-guard --namespace fault --days 2 >/dev/null 2>&1
done
cat "$WORK"/v*/ca.crt >"$WORK/ca-bundle.crt"
mkdir -p "$WORK/broken"
cp "$WORK/v3/tls.crt" "$WORK/broken/tls.crt" && cp "$WORK/v1/tls.key" "$WORK/broken/tls.key"
TLS=$WORK/tls
mkdir -p "$TLS"
# publish VERSION: the Secret volume's atomic update (hack/lib/secret-volume.sh).
# shellcheck source=hack/lib/secret-volume.sh
source hack/lib/secret-volume.sh  # the working directory is the repository's (above)
publish() { publish_tls "$TLS" "$WORK/$1" "$1"; }
publish v1

"$BIN" serve --addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --log-format json --namespace-cache off \
  --tls-cert "$TLS/tls.crt" --tls-key "$TLS/tls.key" --tls-reload-interval 1s \
  --handshake-timeout 2s --request-timeout 3s --shutdown-delay 5s --shutdown-timeout 10s \
  2>"$OUT/serve.log" &
SERVE=$!
PIDS+=("$SERVE")
addr() { grep -o "\"addr\":\"[^\"]*\",\"message\":\"listening ($1)\"\|\"message\":\"listening ($1)\"[^}]*" "$OUT/serve.log" | grep -o '127.0.0.1:[0-9]*' | head -1; }
for _ in $(seq 100); do [ -n "$(addr HTTP)" ] && [ -n "$(addr HTTPS)" ] && break; sleep 0.1; done
WEBHOOK=$(addr HTTPS) METRICS=$(addr HTTP)
[ -n "$WEBHOOK" ] && [ -n "$METRICS" ] || { echo "serve did not start:"; cat "$OUT/serve.log"; exit 1; }
rss() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$SERVE/status"; }
metric() { curl -fsS "http://$METRICS/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
wait_metric() { # NAME VALUE: up to 15 s
  for _ in $(seq 150); do [ "$(metric "$1")" = "$2" ] && return 0; sleep 0.1; done
  log "timed out waiting for $1 = $2 (it is $(metric "$1"))"; return 1
}
sleep 1
RSS_BEFORE=$(rss VmRSS)
log "serve on $WEBHOOK (metrics $METRICS), RSS $RSS_BEFORE KiB"

"$LOADGEN" --url "https://$WEBHOOK" --ca "$WORK/ca-bundle.crt" --connections "$CONNS" --duration "${DURATION}s" \
  --warmup 0s --server-pid "$SERVE" --interval 5s --label fault --json "$OUT/load.json" >"$OUT/loadgen.log" 2>&1 &
LOAD=$!
PIDS+=("$LOAD")
log "load: $CONNS connections for ${DURATION}s"

ok=1
sleep 5
publish v2 && log "rotated to v2"
wait_metric 'default_deny_guard_tls_reloads_total{result="success"}' 1 && log "v2 in service" || ok=0

sleep 2
log "burst of malformed and oversized requests"
BURST=$(python3 hack/fault-clients.py burst 127.0.0.1 "${WEBHOOK#*:}" "$WORK/ca-bundle.crt")
log "burst: $BURST"

log "stalled connections, held 6 s"
STALL=$(python3 hack/fault-clients.py stall 127.0.0.1 "${WEBHOOK#*:}" "$WORK/ca-bundle.crt" 6)
log "stall: $STALL"

publish v3 && log "rotated to v3"
wait_metric 'default_deny_guard_tls_reloads_total{result="success"}' 2 && log "v3 in service" || ok=0
publish broken && log "rotated to a broken pair (key of v1, certificate of v3)"
wait_metric 'default_deny_guard_tls_reloads_total{result="error"}' 1 && log "broken pair rejected" || ok=0
# v3 still served: a client that trusts only v3's CA completes a handshake.
if curl -fsS --cacert "$WORK/v3/ca.crt" "https://$WEBHOOK/healthz" >/dev/null; then log "v3 still in service"; else log "v3 NOT in service"; ok=0; fi

# SIGTERM a few seconds before the load ends: the server turns unready and serves on for --shutdown-delay (5 s),
# long enough for the load (standing in for the API server, which stops sending once the endpoint is gone) to end.
now=$(awk "BEGIN{print int($(date +%s.%N) - $T0)}")
sleep $(( DURATION - now > 3 ? DURATION - now - 3 : 0 ))
RSS_AFTER=$(rss VmRSS) HWM=$(rss VmHWM)
log "SIGTERM (RSS $RSS_AFTER KiB, peak $HWM KiB)"
kill -TERM "$SERVE"
wait "$LOAD" || true
set +e; wait "$SERVE"; SERVE_EXIT=$?; set -e
log "serve exited with $SERVE_EXIT"

python3 - "$OUT" "$RSS_BEFORE" "$RSS_AFTER" "$HWM" "$SERVE_EXIT" "$BURST" "$STALL" "$ok" <<'PY'
import json, sys
out, rss_before, rss_after, hwm, serve_exit, burst, stall, ok = sys.argv[1:]
load = json.load(open(f"{out}/load.json"))
burst, stall = json.loads(burst), json.loads(stall)
bad_answers = {k: v for k, v in burst["answers"].items() if k not in ("4xx", "closed while sending an oversized body")}
report = {
    "well_formed": {"sent": load["sent"], "answered": load["answered"], "failed": load["failed"], "errors": load.get("errors", {})},
    "latency_us": load.get("latency_us"),
    "malformed_burst": burst,
    "stalled_connections": stall,
    "rss_kib": {"before": int(rss_before), "after": int(rss_after), "peak": int(hwm)},
    "serve_exit": int(serve_exit),
}
passed = (load["failed"] == 0 and load["answered"] == load["sent"] and not bad_answers
          and not burst["client_errors"] and int(serve_exit) == 0 and ok == "1")
report["passed"] = passed
json.dump(report, open(f"{out}/report.json", "w"), indent=2)
print()
print(f"well-formed requests: {load['sent']} sent, {load['answered']} answered, {load['failed']} failed {load.get('errors') or ''}")
print(f"malformed burst:      {burst['sent']} sent, answers {burst['answers']}, {burst['reconnects']} reconnects, client errors {burst['client_errors'] or 'none'}")
print(f"stalled connections:  {stall}")
print(f"server RSS:           {int(rss_before)/1024:.1f} MiB before, {int(rss_after)/1024:.1f} MiB after, peak {int(hwm)/1024:.1f} MiB")
print(f"serve exit status:    {serve_exit}")
print(f"fault test: {'PASSED' if passed else 'FAILED'} ({out}/report.json)")
sys.exit(0 if passed else 1)
PY
