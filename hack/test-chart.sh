#!/usr/bin/env bash
# Tests the Helm chart and the Dockerfile without a cluster or a Docker engine:
#   1. helm lint --strict                 default values and every ci/*-values.yaml mode
#   2. helm template | kubernetes-validate --strict -k $CHART_KUBE_VERSION (default 1.37.0), every mode (built-in kinds only: CRD kinds such
#      as cert-manager's Certificate and prometheus-operator's ServiceMonitor have no schema offline; they are
#      filtered out by tests/chart/builtin_kinds.py, named in the log, and checked by the assertions instead)
#   3. pytest tests/chart                 assertions on the rendered YAML (webhooks, ports, probes, security,
#                                         certificate modes, url mode, schema, NOTES, monitoring, appVersion; the
#                                         reconciler's RBAC, flags, probes, NetworkPolicy and monitoring jobs)
#   4. hadolint --failure-threshold warning Dockerfile
# Installs the pinned tools first when missing (hack/install-chart-tools.sh). Exits non-zero on any failure.
#
# Usage: hack/test-chart.sh            (env: DDG_CACHE for the tools' location, KUBE_VERSION, default 1.33.0)
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chart=$root/charts/default-deny-guard
kube_version=${CHART_KUBE_VERSION:-1.37.0}
release=ddg
namespace=ddg-system

bin=$("$root/hack/install-chart-tools.sh") || { echo "test-chart: installing the tools failed" >&2; exit 2; }
export PATH="$bin:$PATH" HELM="$bin/helm" PYTHONDONTWRITEBYTECODE=1
python=$(dirname "$bin")/venv/bin/python

logdir=$(mktemp -d)
pytest_pid=
trap '[ -n "$pytest_pid" ] && kill "$pytest_pid" 2>/dev/null; rm -rf "$logdir"' EXIT
passed=0
failed=0
failures=()
tests_passed=0   # pytest's own counts, added to the checks' in the closing line
tests_failed=0
start=$SECONDS

# check NAME COMMAND...: runs a check, keeps its output, prints it only when it fails.
check() {
  local name=$1; shift
  local log=$logdir/$passed-$failed.log
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    printf '  ok    %s\n' "$name"
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf '  FAIL  %s\n' "$name"
    sed 's/^/        /' "$log"
  fi
}

# The modes: default values, then each values file of ci/ (the same files chart-testing would use).
modes=(default)
for f in "$chart"/ci/*-values.yaml; do
  m=$(basename "$f" -values.yaml)
  [ "$m" = default ] || modes+=("$m")
done

values_file() { if [ "$1" = default ]; then echo /dev/null; else echo "$chart/ci/$1-values.yaml"; fi; }
lint() { helm lint --strict --kube-version "$kube_version" "$chart" --values "$(values_file "$1")"; }
# validate MODE [KUBE_VERSION [HELM_ARGS...]]: renders for that Kubernetes version and validates against its schemas.
validate() {
  local mode=$1 version=${2:-$kube_version}
  shift $(($# < 2 ? $# : 2))
  helm template "$release" "$chart" --namespace "$namespace" --kube-version "$version" --values "$(values_file "$mode")" "$@" \
    | "$python" "$root/tests/chart/builtin_kinds.py" \
    | kubernetes-validate --strict -k "$version" --quiet -
}

# pytest runs in the background meanwhile: rendering (RSA key generation for the self-signed mode) dominates.
pytest_log=$logdir/pytest.log
(cd "$root" && exec "$python" -m pytest -q -p no:cacheprovider tests/chart) >"$pytest_log" 2>&1 &
pytest_pid=$!

echo "helm lint --strict:"
for m in "${modes[@]}"; do check "lint $m" lint "$m"; done

echo "helm template | kubernetes-validate --strict -k $kube_version (built-in kinds):"
for m in "${modes[@]}"; do check "validate $m" validate "$m"; done
echo "the oldest Kubernetes version the chart supports (Chart.yaml kubeVersion: the oldest the end-to-end suite runs on):"
check "validate default on 1.34.0" validate default 1.34.0
check "validate options on 1.34.0" validate options 1.34.0
check "validate reconciler-cronjob on 1.34.0" validate reconciler-cronjob 1.34.0

echo "hadolint:"
check "hadolint --failure-threshold warning Dockerfile" hadolint --failure-threshold warning "$root/Dockerfile"

echo "pytest tests/chart:"
wait "$pytest_pid"
pytest_rc=$?
pytest_pid=
summary=$(tail -n 1 "$pytest_log" | tr -d '=' | sed 's/^ *//; s/ *$//')
tests_passed=$(grep -o '[0-9]* passed' <<<"$summary" | grep -o '[0-9]*' || echo 0)
tests_failed=$(( $(grep -o '[0-9]* failed' <<<"$summary" | grep -o '[0-9]*' || echo 0) \
               + $(grep -o '[0-9]* error' <<<"$summary" | grep -o '[0-9]*' || echo 0) ))
if [ "$pytest_rc" -eq 0 ]; then
  printf '  ok    %s\n' "$summary"
else
  [ "$tests_failed" -gt 0 ] || tests_failed=1   # pytest itself failed (collection, missing module)
  failures+=("pytest")
  sed 's/^/        /' "$pytest_log"
  printf '  FAIL  pytest: %s\n' "$summary"
fi

echo
echo "test-chart: $((SECONDS - start))s; helm $(helm version --short); Kubernetes schemas $kube_version;" \
  "$passed checks and $tests_passed pytest tests passed"
if [ "${#failures[@]}" -gt 0 ]; then
  printf 'test-chart: failed: %s\n' "${failures[@]}"
fi
echo "test-chart: $((passed + tests_passed)) passed, $((failed + tests_failed)) failed"
[ "${#failures[@]}" -eq 0 ]
