#!/usr/bin/env bash
# Rollout test (README, "Robustness"; issue 15): does a rolling restart of the webhook lose admission calls?
#
# REPLICAS `serve` processes (3) behind HAProxy on 127.0.0.1 in TCP mode, as a Service behind kube-proxy: each
# connection is pinned to one replica, and a replica whose `GET /readyz` fails gets no new connections (checked
# every 300 ms). Then ROUNDS rolling restarts (10), each replica in turn the way a Deployment with maxSurge 1 and
# maxUnavailable 0 does it: the new process starts on a port of its own, and once the balancer routes to it, the
# old one is terminated and must exit 0. In the middle of the rollout the certificate is rotated (a Secret's
# `..data` swap; the caBundle trusts the old and the new CA, as during a cert-manager CA rotation).
# Two clients, one rollout each (CLIENTS):
#   load     examples/loadgen.rs: CONNS keep-alive connections (8) that ignore readiness, each sending the next
#            review as soon as the answer is in, as kube-apiserver's webhook client does. Reported: requests sent,
#            answered, lost (a request that never left a connection the server had closed is sent again on a new
#            one, as Go's client does, and counted as `resent`).
#   cluster  the real kube-apiserver (hack/kube-local) with the chart's webhook configurations pointing at the
#            balancer, and KUBECTL_LOOPS loops (4) of `kubectl apply` and `kubectl delete` of a NetworkPolicy.
#            Reported: kubectl calls made and failed, and the admission calls the replicas answered.
# The pause between a pod's deletion and its listener closing (PAUSE): `server` (default) is serve's own drain:
# SIGTERM at once, `--shutdown-delay DELAY`; `prestop` is the chart's preStop sleep as Kubernetes runs it: the
# replica is taken out of the balancer (the endpoint removed), DELAY seconds pass, then SIGTERM with no delay.
#
# Exit 0 only if nothing was lost and every replica exited 0. A table on stdout, JSON in $OUT/report-*.json.
#
# Usage:  hack/rollout-test.sh                 both clients, 10 rounds of 3 replicas (about 8 minutes)
#         ROLLOUT_SHORT=1 hack/rollout-test.sh  CI: 2 rounds, both clients, 2 s pause (about 2 minutes after the
#                                               builds; the load generator's debug build)
# Knobs:  ROUNDS REPLICAS DELAY CONNS KUBECTL_LOOPS PAUSE=server|prestop CLIENTS="load cluster" LOAD_HTTP2=1 (the
#         load harness over HTTP/2, as kube-apiserver speaks to webhooks)
#         ROLLOUT_BIN (a `default-deny-guard` binary to test instead of this tree's release build: the before/after
#         comparison), ROLLOUT_LOADGEN (likewise examples/loadgen), OUT (target/rollout), APISERVER_PORT ETCD_PORT
#         KUBE_LOCAL_RUN (the cluster's; default free ports and a directory under OUT).
set -Eeuo pipefail
{
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${ROLLOUT_SHORT:-0}" = 1 ]; then
  ROUNDS=${ROUNDS:-2} DELAY=${DELAY:-2}
fi
ROUNDS=${ROUNDS:-10}
REPLICAS=${REPLICAS:-3}
DELAY=${DELAY:-3}
CONNS=${CONNS:-8}
KUBECTL_LOOPS=${KUBECTL_LOOPS:-4}
PAUSE=${PAUSE:-server}
CLIENTS=${CLIENTS:-load cluster}
OUT=${OUT:-target/rollout}
TARGET=${CARGO_TARGET_DIR:-target}
export DDG_CACHE=${DDG_CACHE:-$HOME/.cache/default-deny-guard}
case $PAUSE in server | prestop) ;; *) echo "PAUSE must be server or prestop" >&2; exit 2 ;; esac

T0=$(date +%s.%N)
log() { printf '[rollout %6.1fs] %s\n' "$(awk "BEGIN{print $(date +%s.%N) - $T0}")" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# --- Tools: HAProxy from Debian (installed if missing), the binaries under test ---
if ! command -v haproxy >/dev/null; then
  log "installing haproxy (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; } >/dev/null \
    || die "cannot install haproxy"
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
case " $CLIENTS " in *" load "*) WANT_LOADGEN=1 ;; *) WANT_LOADGEN=0 ;; esac
# The load generator in release, except in the short mode: CI has its debug build from `cargo test --all-targets`
# already (a release build of an example compiles every dev-dependency with LTO), and the server's release build from
# hack/e2e.sh.
LOADGEN_PROFILE=release
[ "${ROLLOUT_SHORT:-0}" = 1 ] && LOADGEN_PROFILE=debug
if [ -z "${ROLLOUT_BIN:-}" ]; then
  log "build (release): default-deny-guard"
  cargo build --release --locked --bin default-deny-guard >&2
fi
if [ "$WANT_LOADGEN" = 1 ] && [ -z "${ROLLOUT_LOADGEN:-}" ]; then
  log "build ($LOADGEN_PROFILE): examples/loadgen"
  if [ "$LOADGEN_PROFILE" = release ]; then cargo build --release --locked --example loadgen >&2; else cargo build --locked --example loadgen >&2; fi
fi
BIN=$OUT/default-deny-guard LOADGEN=$OUT/loadgen
cp "${ROLLOUT_BIN:-$TARGET/release/default-deny-guard}" "$BIN"
if [ "$WANT_LOADGEN" = 1 ]; then cp "${ROLLOUT_LOADGEN:-$TARGET/$LOADGEN_PROFILE/examples/loadgen}" "$LOADGEN"; fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ddg-rollout.XXXXXX")
PIDS=()
CLUSTER_UP=0
cleanup() {
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [ "$CLUSTER_UP" = 1 ]; then bash hack/kube-local/down.sh >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- Certificates: two generations, and a caBundle that trusts both ---
for v in v1 v2; do
  "$BIN" certs --out "$WORK/$v" --service default-deny-guard --namespace rollout --days 2 >/dev/null 2>&1
done
cat "$WORK"/v*/ca.crt >"$WORK/ca-bundle.crt"
TLS=$WORK/tls
mkdir -p "$TLS"
# publish VERSION: the Secret volume's atomic update (hack/lib/secret-volume.sh).
# shellcheck source=hack/lib/secret-volume.sh
source hack/lib/secret-volume.sh  # the working directory is the repository's (above)
publish() { publish_tls "$TLS" "$WORK/$1" "$1"; }
# serves_version VERSION PORT: the certificate a handshake with the replica on PORT gets is VERSION's.
serves_version() {
  curl -fsS --max-time 2 --cacert "$WORK/$1/ca.crt" "https://127.0.0.1:$2/healthz" >/dev/null 2>&1
}

# --- The balancer ---
# Two ports per replica slot, used in turn, so that the new process can start before the old one goes.
declare -a PORT_A PORT_B
for ((i = 0; i < REPLICAS; i++)); do PORT_A[i]=$(free_port); PORT_B[i]=$(free_port); done
LB_PORT=$(free_port)
LB_SOCK=$WORK/haproxy.sock
{
  cat <<EOF
global
  maxconn 4096
  stats socket $LB_SOCK mode 600 level admin
  log stderr format raw local0 info
defaults
  mode tcp
  log global
  option tcplog
  timeout connect 1s
  timeout client 150s
  timeout server 150s
  timeout check 1s
  # A replica that refuses the connection (already gone): try again, on another one.
  retries 3
  option redispatch 1
frontend webhook
  bind 127.0.0.1:$LB_PORT
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk
  http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
  http-check expect status 200
  default-server check check-ssl verify none inter 300ms fall 1 rise 1
EOF
  for ((i = 0; i < REPLICAS; i++)); do
    echo "  server r${i}a 127.0.0.1:${PORT_A[i]}"
    echo "  server r${i}b 127.0.0.1:${PORT_B[i]}"
  done
} >"$WORK/haproxy.cfg"
# lb COMMAND: HAProxy's runtime API.
lb() {
  python3 - "$LB_SOCK" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while chunk := s.recv(65536):
    out += chunk
sys.stdout.write(out.decode())
PY
}
# lb_status SERVER: UP, DOWN, MAINT, ...
lb_status() { lb "show stat" | awk -F, -v s="$1" '$1 == "replicas" && $2 == s {print $18}'; }
wait_lb() { # SERVER STATUS-PREFIX: up to 10 s
  for _ in $(seq 100); do case $(lb_status "$1") in "$2"*) return 0 ;; esac; sleep 0.1; done
  die "the balancer did not see $1 as $2 (it is $(lb_status "$1"))"
}

# --- Replicas ---
declare -a CUR_PID CUR_NAME CUR_PORT
GEN=0 RESTARTS=0 BAD_EXITS=0
SERVE_EXTRA=()
# start_replica SLOT: a new process on the slot's free port; returns once the balancer routes to it.
start_replica() {
  local slot=$1 name port
  if [ "${CUR_NAME[slot]:-}" = "r${slot}a" ]; then name=r${slot}b port=${PORT_B[slot]}; else name=r${slot}a port=${PORT_A[slot]}; fi
  GEN=$((GEN + 1))
  local delay=$DELAY
  [ "$PAUSE" = prestop ] && delay=0
  lb "enable server replicas/$name" >/dev/null
  RUST_LOG=${SERVE_LOG:-info} "$BIN" serve --addr "127.0.0.1:$port" --metrics-addr 127.0.0.1:0 --log-format json \
    --namespace-cache off --tls-cert "$TLS/tls.crt" --tls-key "$TLS/tls.key" --tls-reload-interval 1s \
    --shutdown-delay "${delay}s" --shutdown-timeout 10s "${SERVE_EXTRA[@]}" \
    2>"$RUN_OUT/replica-$(printf %03d $GEN)-$name.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do
    curl -fsS --max-time 1 --cacert "$WORK/ca-bundle.crt" "https://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || die "replica $name exited at start (see $RUN_OUT)"
    sleep 0.1
  done
  wait_lb "$name" UP
  NEW_PID=$pid NEW_NAME=$name NEW_PORT=$port
}
# stop_replica PID NAME: the pod's deletion, as PAUSE says; waits for the exit, which must be 0.
stop_replica() {
  local pid=$1 name=$2 status
  if [ "$PAUSE" = prestop ]; then
    lb "disable server replicas/$name" >/dev/null
    sleep "$DELAY"
  fi
  kill -TERM "$pid"
  set +e; wait "$pid"; status=$?; set -e
  if [ "$status" != 0 ]; then BAD_EXITS=$((BAD_EXITS + 1)); log "replica $name (pid $pid) exited with $status"; fi
}
restart_slot() {
  local slot=$1
  start_replica "$slot"
  local old_pid=${CUR_PID[slot]} old_name=${CUR_NAME[slot]}
  CUR_PID[slot]=$NEW_PID CUR_NAME[slot]=$NEW_NAME CUR_PORT[slot]=$NEW_PORT
  stop_replica "$old_pid" "$old_name"
  RESTARTS=$((RESTARTS + 1))
}

# rollout NAME: starts the replicas and the balancer, runs the rounds (rotating the certificate half-way), stops all.
rollout() {
  RUN_OUT=$OUT/$1
  rm -rf "$RUN_OUT" && mkdir -p "$RUN_OUT"
  publish v1
  CUR_NAME=() CUR_PID=() CUR_PORT=() RESTARTS=0 BAD_EXITS=0
  haproxy -f "$WORK/haproxy.cfg" -db 2>"$RUN_OUT/haproxy.log" &
  LB_PID=$!
  PIDS+=("$LB_PID")
  for _ in $(seq 50); do [ -S "$LB_SOCK" ] && lb "show info" >/dev/null 2>&1 && break; sleep 0.1; done
  for ((i = 0; i < REPLICAS; i++)); do
    start_replica "$i"
    CUR_PID[i]=$NEW_PID CUR_NAME[i]=$NEW_NAME CUR_PORT[i]=$NEW_PORT
  done
  # The unused ports: down before any client comes (HAProxy starts with every server up until its first check).
  for ((i = 0; i < REPLICAS; i++)); do wait_lb "r${i}b" DOWN; done
  log "$1: $REPLICAS replicas behind 127.0.0.1:$LB_PORT (pause: $PAUSE, ${DELAY}s)"
}
rounds() {
  local rotate_at=$(((ROUNDS + 1) / 2)) r i
  for ((r = 1; r <= ROUNDS; r++)); do
    for ((i = 0; i < REPLICAS; i++)); do
      restart_slot "$i"
      if [ "$r" = "$rotate_at" ] && [ "$i" = 0 ]; then
        # Mid-rollout: one replica is new, the others are about to go. Each serves v2 within its reload interval.
        publish v2
        for ((j = 0; j < REPLICAS; j++)); do
          for _ in $(seq 50); do serves_version v2 "${CUR_PORT[j]}" && break; sleep 0.1; done
          serves_version v2 "${CUR_PORT[j]}" || die "replica ${CUR_NAME[j]} does not serve the rotated certificate"
        done
        log "certificate rotated to v2 in the middle of round $r; every replica serves it"
      fi
    done
    log "round $r/$ROUNDS done ($RESTARTS restarts)"
  done
}
teardown() {
  for ((i = 0; i < REPLICAS; i++)); do kill -TERM "${CUR_PID[i]}" 2>/dev/null || true; wait "${CUR_PID[i]}" 2>/dev/null || true; done
  kill -TERM "$LB_PID" 2>/dev/null || true
  wait "$LB_PID" 2>/dev/null || true
}

# --- Client 1: the load harness ---
run_load() {
  rollout load
  local http2=()
  [ "${LOAD_HTTP2:-0}" = 1 ] && http2=(--http2)
  "$LOADGEN" --url "https://127.0.0.1:$LB_PORT" --ca "$WORK/ca-bundle.crt" --connections "$CONNS" --duration 1h "${http2[@]}" \
    --warmup 0s --interval 5s --label rollout --json "$RUN_OUT/load.json" >"$RUN_OUT/loadgen.log" 2>&1 &
  local load=$!
  PIDS+=("$load")
  sleep 2
  rounds
  sleep 1
  kill -INT "$load"
  wait "$load" || die "loadgen failed: $(tail -3 "$RUN_OUT/loadgen.log")"
  teardown
  python3 - "$RUN_OUT/load.json" "$RESTARTS" "$BAD_EXITS" "$ROUNDS" "$REPLICAS" "$PAUSE" "$DELAY" "$OUT/report-load.json" <<'PY'
import json, sys
load = json.load(open(sys.argv[1]))
restarts, bad_exits, rounds, replicas, pause, delay, out = sys.argv[2:]
report = {
    "client": "loadgen", "rounds": int(rounds), "replicas": int(replicas), "restarts": int(restarts),
    "pause": pause, "delay_s": int(delay), "bad_exits": int(bad_exits),
    "sent": load["sent"], "answered": load["answered"], "lost": load["failed"], "errors": load["errors"],
    "resent": load["resent"], "closed_by_answer": load["closed_by_answer"],
    "duration_s": round(load["duration_s"], 1), "latency_us": load["latency_us"],
}
report["passed"] = report["lost"] == 0 and report["answered"] == report["sent"] and report["bad_exits"] == 0
json.dump(report, open(out, "w"), indent=2)
print(f"load harness: {report['restarts']} restarts ({rounds} rounds x {replicas}), pause {pause} {delay}s: "
      f"{report['sent']} sent, {report['answered']} answered, {report['lost']} lost {report['errors'] or ''}"
      f"(resent on a new connection: {report['resent']}, answers with Connection: close: {report['closed_by_answer']}); "
      f"replicas exiting non-zero: {report['bad_exits']}; p99 {report['latency_us']['p99']} us, max {report['latency_us']['max']} us")
PY
}

# --- Client 2: the real API server, kubectl in a loop ---
free_pair() { # two consecutive free ports (etcd's client and peer ports)
  python3 -c '
import random, socket
for _ in range(100):
    p = random.randint(20000, 40000)
    try:
        for q in (p, p + 1):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass'
}
run_cluster() {
  export KUBE_LOCAL_RUN=${KUBE_LOCAL_RUN:-$OUT/kube-local}
  export ETCD_PORT=${ETCD_PORT:-$(free_pair)}
  export APISERVER_PORT=${APISERVER_PORT:-$(free_port)}
  log "control plane: hack/kube-local (apiserver 127.0.0.1:$APISERVER_PORT, etcd $ETCD_PORT, $KUBE_LOCAL_RUN)"
  local kube_bin helm w
  kube_bin=$(bash hack/kube-local/provision.sh | tail -n 1)
  helm=$(bash hack/install-chart-tools.sh | tail -n 1)/helm
  CLUSTER_UP=1
  export KUBECONFIG
  KUBECONFIG=$(bash hack/kube-local/up.sh | tail -n 1)
  local kubectl=("$kube_bin/kubectl" --request-timeout=20s)
  # Every decision and each connection's protocol: the server module's lines down to debug.
  SERVE_LOG=info,default_deny_guard::server=debug
  rollout cluster
  "$helm" template rollout charts/default-deny-guard --kube-version "$(cat "$kube_bin/.version")" --set "webhook.url=https://127.0.0.1:$LB_PORT" \
    --set-file "webhook.caBundle=$WORK/ca-bundle.crt" \
    --show-only templates/validatingwebhookconfiguration.yaml --show-only templates/mutatingwebhookconfiguration.yaml \
    | "${kubectl[@]}" apply -f - >&2
  for ((w = 0; w < KUBECTL_LOOPS; w++)); do
    "${kubectl[@]}" create namespace "rollout-$w" >/dev/null
    cat >"$WORK/np-$w.yaml" <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-allow-frontend
  namespace: rollout-$w
  # A default-deny policy (every pod selected), so that the chart's matchConditions send each of its writes to the
  # webhook; the exception lets its deletion through (R2).
  annotations:
    default-deny-guard.io/exception: "rollout test: created and deleted in a loop"
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector:
            matchLabels: {app: frontend}
      ports:
        - {port: 8080, protocol: TCP}
EOF
  done
  # Until the API server calls the webhook (its configuration informer): a server-side dry run is reviewed too.
  for _ in $(seq 100); do
    "${kubectl[@]}" apply --dry-run=server -f "$WORK/np-0.yaml" >/dev/null 2>&1 || true
    grep -q '"admission decision"' "$RUN_OUT"/replica-*.log && break
    sleep 0.2
  done
  grep -q '"admission decision"' "$RUN_OUT"/replica-*.log || die "the API server does not call the webhook"
  rm -f "$WORK/stop"
  local loops=()
  for ((w = 0; w < KUBECTL_LOOPS; w++)); do
    (
      while [ ! -e "$WORK/stop" ]; do
        for op in apply delete; do
          args=("$op" -f "$WORK/np-$w.yaml")
          [ "$op" = delete ] && args+=(--ignore-not-found)
          if "${kubectl[@]}" "${args[@]}" >/dev/null 2>"$WORK/err-$w"; then
            echo "$(date +%s.%N) $op ok"
          else
            echo "$(date +%s.%N) $op FAILED $(tr '\n' ' ' <"$WORK/err-$w")"
          fi >>"$RUN_OUT/calls-$w.log"
        done
      done
    ) &
    loops+=($!)
    PIDS+=($!)
  done
  sleep 2
  rounds
  sleep 1
  touch "$WORK/stop"
  wait "${loops[@]}"
  teardown
  python3 - "$RUN_OUT" "$RESTARTS" "$BAD_EXITS" "$ROUNDS" "$REPLICAS" "$PAUSE" "$DELAY" "$OUT/report-cluster.json" <<'PY'
import glob, json, sys
run, restarts, bad_exits, rounds, replicas, pause, delay, out = sys.argv[1:]
calls, failed = 0, []
for f in glob.glob(f"{run}/calls-*.log"):
    for line in open(f):
        calls += 1
        if " FAILED " in line:
            failed.append(line.strip())
decisions, protocols = 0, {}
for f in glob.glob(f"{run}/replica-*.log"):
    for line in open(f):
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if v.get("message") == "admission decision":
            decisions += 1
        elif v.get("message") == "connection accepted" and v.get("alpn") != "none":
            protocols[v.get("http")] = protocols.get(v.get("http"), 0) + 1
report = {
    "client": "kubectl through kube-apiserver", "rounds": int(rounds), "replicas": int(replicas),
    "restarts": int(restarts), "pause": pause, "delay_s": int(delay), "bad_exits": int(bad_exits),
    "kubectl_calls": calls, "kubectl_failed": len(failed),
    "webhook_failures": sum("failed calling webhook" in f for f in failed),
    "admission_calls_answered": decisions, "apiserver_connections": protocols, "failures": failed[:20],
}
report["passed"] = not failed and report["bad_exits"] == 0 and decisions > 0
json.dump(report, open(out, "w"), indent=2)
print(f"kube-apiserver: {report['restarts']} restarts ({rounds} rounds x {replicas}), pause {pause} {delay}s: "
      f"{calls} kubectl calls, {len(failed)} failed ({report['webhook_failures']} 'failed calling webhook'); "
      f"{decisions} admission calls answered; the API server's connections: {protocols}; "
      f"replicas exiting non-zero: {report['bad_exits']}")
for f in failed[:5]:
    print("  " + f)
PY
  bash hack/kube-local/down.sh >/dev/null 2>&1 || true
  CLUSTER_UP=0
}

for client in $CLIENTS; do
  case $client in
    load) run_load ;;
    cluster) run_cluster ;;
    *) die "unknown client $client (load, cluster)" ;;
  esac
done
passed=1
for client in $CLIENTS; do
  python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["passed"] else 1)' "$OUT/report-$client.json" || passed=0
done
if [ "$passed" = 1 ]; then log "rollout test PASSED ($OUT)"; else log "rollout test FAILED ($OUT)"; exit 1; fi
}
