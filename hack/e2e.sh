#!/usr/bin/env bash
# The end-to-end suite (tests/e2e.rs) against a real Kubernetes control plane on 127.0.0.1, by default the newest
# pinned 1.37.x (KUBE_VERSION=1.34 for the other tested minor; hack/kube-local/common.sh):
#   1. hack/kube-local/provision.sh      builds kube-apiserver, kube-controller-manager, kubectl and etcd from their Go
#                                        modules once per version (cold: see docs/e2e.md; then ~0 s)
#   2. hack/install-chart-tools.sh       helm, to render the chart's webhook configurations (then ~0 s)
#   3. cargo build --release --locked    the binary under test, and the suite's test binary (--no-run)
#   4. hack/kube-local/up.sh             a fresh etcd + kube-apiserver + kube-controller-manager (~10 s), whose
#                                        controllers act under their own service accounts
#   5. cargo test --release --locked --test e2e -- --ignored --test-threads=1
#   6. the teardown scenarios again, on a control plane whose controller manager acts under its own identity
#      (KCM_SERVICE_ACCOUNTS=0): there only the namespace's deletionTimestamp tells a teardown from a deletion
#   7. tests/e2e_policies.rs (the in-API-server policies against the webhook) on a fresh control plane
#   8. tests/e2e_audit.rs (the reconciler's audit of a cluster prepared before the product) on a fresh control plane
#   9. hack/kube-local/down.sh           always (EXIT trap), whatever happened before; stops by saved PIDs
# and prints a summary line with each step's duration.
#
# Usage: hack/e2e.sh [TEST-NAME-FILTER]      e.g. hack/e2e.sh teardown
# Env:   KUBE_VERSION      the Kubernetes minor or release (default 1.37)
#        DDG_E2E_TIMEOUT   seconds for the whole run (default 2700); each step also has its own cap, and the
#                          step in progress is stopped when either runs out
#        DDG_E2E_KEEP=1    keep the work directory (logs, transcript) also after a successful run
#        APISERVER_PORT, ETCD_PORT   fixed ports (default: free ones, so a cluster you run yourself is untouched)
#        DDG_CACHE, CARGO_TARGET_DIR as everywhere else
# Everything of a run lives in one work directory, printed at the start and kept on failure: the control plane's
# data, PKI, logs and audit log (kube-local/, kube-local-own-identity/), the webhook's logs and every kubectl call
# with its output (suite/, suite-own-identity/).
set -Eeuo pipefail
# The whole script is one compound command, read before it runs: a run takes minutes, and bash reads a script as it
# goes, so an edit (or a git checkout) in the meantime would otherwise change what the rest of the run executes.
{
cd "$(dirname "$0")/.."
ROOT=$PWD
export DDG_CACHE=${DDG_CACHE:-$HOME/.cache/default-deny-guard}
BUDGET=${DDG_E2E_TIMEOUT:-2700}
FILTER=${1:-}
start=$SECONDS

log() { printf '[e2e] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ddg-e2e.XXXXXX")
export KUBE_LOCAL_RUN=$WORK/kube-local
export DDG_E2E_WORK=$WORK/suite
mkdir -p "$DDG_E2E_WORK"
log "work directory: $WORK"

# Free ports for etcd (client, and +1 for peers) and the API server, unless given.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_pair() {
  local p _
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 30000))
    port_busy "$p" || port_busy "$((p + 1))" || { echo "$p"; return 0; }
  done
  log "no free port found"; return 1
}
export ETCD_PORT=${ETCD_PORT:-$(free_pair)}
if [ -z "${APISERVER_PORT:-}" ]; then
  APISERVER_PORT=$(free_pair)
  while [ "$APISERVER_PORT" -ge "$ETCD_PORT" ] && [ "$APISERVER_PORT" -le $((ETCD_PORT + 1)) ]; do APISERVER_PORT=$(free_pair); done
fi
export APISERVER_PORT

# --- Steps, each bounded by its cap and by what is left of the budget; interruptible (TERM/INT stop the step).
declare -A took=()
step_pid='' step_name=setup step_t0=0
result=FAILED
detail=
cluster_up=0

# run_step NAME CAP_SECONDS CMD...: runs CMD in its own process group under `timeout`, records its duration.
run_step() {
  local name=$1 cap=$2 t0=$SECONDS left rc=0
  shift 2
  left=$((BUDGET - (SECONDS - start)))
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -le 0 ]; then
    log "$name: the budget of ${BUDGET} s (DDG_E2E_TIMEOUT) is used up"
    return 124
  fi
  log "$name (at most ${cap} s)"
  step_name=$name step_t0=$t0
  timeout --kill-after=20 "$cap" "$@" &
  step_pid=$!
  wait "$step_pid" || rc=$?
  step_pid=
  took[$name]=$((SECONDS - t0))
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then log "$name: timed out after ${cap} s"; fi
  return "$rc"
}

# shellcheck disable=SC2329 # invoked by the trap
on_signal() {
  log "interrupted during $step_name"
  result=INTERRUPTED
  [ -n "$step_pid" ] && kill -TERM "$step_pid" 2>/dev/null && wait "$step_pid" 2>/dev/null
  took[$step_name]=$((SECONDS - step_t0))
  exit 143
}
trap on_signal INT TERM

# shellcheck disable=SC2329 # invoked by the trap
finish() {
  local rc=$? t0=$SECONDS
  trap - EXIT INT TERM
  if [ "$cluster_up" = 1 ] || [ -d "$KUBE_LOCAL_RUN" ]; then
    # down.sh stops each component by its saved PID (and leftovers whose command line points into this run).
    timeout --kill-after=10 120 hack/kube-local/down.sh || log "down.sh failed (rc $?): see $KUBE_LOCAL_RUN"
    took[down]=$((SECONDS - t0))
  fi
  if [ "$rc" = 0 ]; then result=PASSED; fi
  local facts
  for facts in "$WORK"/suite/facts.txt "$WORK"/suite-own-identity/facts.txt "$WORK"/suite-policies/facts.txt "$WORK"/suite-audit/facts.txt; do
    [ -s "$facts" ] || continue
    log "what the API server did ($(basename "$(dirname "$facts")")):"
    sed 's/^/    /' "$facts" >&2
  done
  local durations="" s
  for s in provision tools build up suite up-own-identity suite-own-identity up-policies suite-policies up-audit suite-audit down; do
    [ -n "${took[$s]:-}" ] && durations+=" $s ${took[$s]}s,"
  done
  printf '[e2e] %s%s in %ss:%s\n' "$result" "${detail:+ ($detail)}" "$((SECONDS - start))" "${durations%,}"
  if [ "$result" = PASSED ] && [ "${DDG_E2E_KEEP:-0}" != 1 ]; then
    rm -rf "$WORK"
  else
    log "kept: $WORK (suite/transcript.txt: every kubectl call; suite/*.log: the webhooks; kube-local/*.log: the control plane)"
  fi
  exit "$rc"
}
trap finish EXIT

run_step provision 3600 hack/kube-local/provision.sh >"$WORK/kube-bin"
KUBE_BIN=$(tail -n 1 "$WORK/kube-bin")
[ -x "$KUBE_BIN/kubectl" ] || { log "no kubectl in $KUBE_BIN"; exit 1; }

run_step tools 900 hack/install-chart-tools.sh >"$WORK/tools-bin"
export DDG_E2E_HELM
DDG_E2E_HELM=$(tail -n 1 "$WORK/tools-bin")/helm
[ -x "$DDG_E2E_HELM" ] || { log "no helm at $DDG_E2E_HELM"; exit 1; }

# The suite's test binary is built here too, before the control plane starts, so that the cluster does not idle
# while the compiler runs and the suite's time is the tests' own.
# The binary is copied as soon as it is built: with a CARGO_TARGET_DIR shared between work trees, another work
# tree's build replaces target/release/default-deny-guard whenever it likes.
built=${CARGO_TARGET_DIR:-$ROOT/target}/release/default-deny-guard
case $built in /*) ;; *) built=$ROOT/$built ;; esac
export DDG_E2E_BIN=$WORK/bin/default-deny-guard
mkdir -p "$WORK/bin"
# shellcheck disable=SC2016 # expanded by the inner shell
run_step build 2400 bash -c 'cargo build --release --locked && cp "$1" "$2" && cargo test --release --locked --test e2e --test e2e_policies --test e2e_audit --no-run' \
  _ "$built" "$DDG_E2E_BIN"
[ -x "$DDG_E2E_BIN" ] || { log "no binary at $DDG_E2E_BIN"; exit 1; }

cluster_up=1
run_step up 300 hack/kube-local/up.sh >"$WORK/kubeconfig-path"
export DDG_E2E_KUBECONFIG DDG_E2E_KUBECTL DDG_E2E_AUDIT_LOG=$KUBE_LOCAL_RUN/audit.log
DDG_E2E_KUBECONFIG=$(tail -n 1 "$WORK/kubeconfig-path")
DDG_E2E_KUBECTL=$KUBE_BIN/kubectl

suite_log=$WORK/suite.out
rc=0
# shellcheck disable=SC2016 # expanded by the inner shell
run_step suite 1500 bash -c 'set -o pipefail
  cargo test --release --locked --test e2e -- --ignored --test-threads=1 ${1:+"$1"} 2>&1 | tee "$2"' _ "$FILTER" "$suite_log" \
  || rc=$?
detail=$(grep -Eo '[0-9]+ passed; [0-9]+ failed' "$suite_log" | tail -n 1 || true)
[ "$rc" = 0 ] || exit "$rc"

# The same teardown scenarios where the controller manager deletes under its own name. A filter given on the command
# line that selects none of them skips this pass.
if [ -z "$FILTER" ] || [[ "$FILTER" == *teardown* ]]; then
  timeout --kill-after=10 120 hack/kube-local/down.sh >/dev/null || true
  export KUBE_LOCAL_RUN=$WORK/kube-local-own-identity DDG_E2E_WORK=$WORK/suite-own-identity
  mkdir -p "$DDG_E2E_WORK"
  run_step up-own-identity 300 env KCM_SERVICE_ACCOUNTS=0 hack/kube-local/up.sh >"$WORK/kubeconfig-path"
  DDG_E2E_KUBECONFIG=$(tail -n 1 "$WORK/kubeconfig-path")
  export DDG_E2E_KCM_IDENTITY=own DDG_E2E_AUDIT_LOG=$KUBE_LOCAL_RUN/audit.log
  own_log=$WORK/suite-own-identity.out
  # shellcheck disable=SC2016 # expanded by the inner shell
  run_step suite-own-identity 600 bash -c 'set -o pipefail
    cargo test --release --locked --test e2e -- --ignored --test-threads=1 teardown 2>&1 | tee "$1"' _ "$own_log" \
    || rc=$?
  detail+=", own identity: $(grep -Eo '[0-9]+ passed; [0-9]+ failed' "$own_log" | tail -n 1 || true)"
fi
[ "$rc" = 0 ] || exit "$rc"

# fresh_suite NAME TEST LIMIT: tests/TEST.rs on a control plane of its own (state in $WORK/kube-local-NAME, the
# suite's work directory $WORK/suite-NAME), as the steps up-NAME and suite-NAME (at most LIMIT s); its tally joins the
# summary line as "NAME: ...".
fresh_suite() {
  local name=$1 test=$2 limit=$3 log=$WORK/suite-$1.out
  timeout --kill-after=10 120 hack/kube-local/down.sh >/dev/null || true
  export KUBE_LOCAL_RUN=$WORK/kube-local-$name DDG_E2E_WORK=$WORK/suite-$name
  unset DDG_E2E_KCM_IDENTITY
  mkdir -p "$DDG_E2E_WORK"
  run_step "up-$name" 300 hack/kube-local/up.sh >"$WORK/kubeconfig-path"
  DDG_E2E_KUBECONFIG=$(tail -n 1 "$WORK/kubeconfig-path")
  export DDG_E2E_AUDIT_LOG=$KUBE_LOCAL_RUN/audit.log
  # shellcheck disable=SC2016 # expanded by the inner shell
  run_step "suite-$name" "$limit" bash -c 'set -o pipefail
    cargo test --release --locked --test "$1" -- --ignored --test-threads=1 2>&1 | tee "$2"' _ "$test" "$log" \
    || rc=$?
  detail+=", $name: $(grep -Eo '[0-9]+ passed; [0-9]+ failed' "$log" | tail -n 1 || true)"
}

# The in-API-server policies against the webhook (tests/e2e_policies.rs), on a fresh control plane: the suite above
# leaves its webhook configurations registered at a webhook that is gone.
if [ -z "$FILTER" ] || [[ "$FILTER" == *polic* || "$FILTER" == *match* ]]; then
  fresh_suite policies e2e_policies 900
fi
# The audit (tests/e2e_audit.rs), on a fresh control plane: it prepares the cluster before the product is there, and
# its findings are of the whole cluster.
if [ -z "$FILTER" ] || [[ "$FILTER" == *audit* ]]; then
  fresh_suite audit e2e_audit 600
fi
exit "$rc"
}
