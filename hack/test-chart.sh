#!/usr/bin/env bash
# Tests the Helm chart and the Dockerfile without a cluster or a Docker engine:
#   1. helm lint --strict                 default values and every ci/*-values.yaml mode
#   2. helm template | kubernetes-validate --strict -k $KUBE_VERSION, every mode (built-in kinds only: CRD kinds such
#      as cert-manager's Certificate and prometheus-operator's ServiceMonitor have no schema offline; they are
#      filtered out by tests/chart/builtin_kinds.py, named in the log, and checked by the assertions instead)
#   3. pytest tests/chart                 assertions on the rendered YAML (webhooks, ports, probes, security,
#                                         certificate modes, url mode, schema, NOTES, monitoring, appVersion)
#   4. hadolint --failure-threshold warning Dockerfile
# Installs the pinned tools first when missing (hack/install-chart-tools.sh). Exits non-zero on any failure.
#
# Usage: hack/test-chart.sh            (env: DDG_CACHE for the tools' location, KUBE_VERSION, default 1.33.0)
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chart=$root/charts/default-deny-guard
kube_version=${KUBE_VERSION:-1.33.0}
release=ddg
namespace=ddg-system

bin=$("$root/hack/install-chart-tools.sh") || { echo "test-chart: installing the tools failed" >&2; exit 2; }
export PATH="$bin:$PATH" HELM="$bin/helm" PYTHONDONTWRITEBYTECODE=1
python=$(dirname "$bin")/venv/bin/python

logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
passed=0
failed=0
failures=()
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
values_of() { [ "$1" = default ] || echo "--values=$chart/ci/$1-values.yaml"; }
for f in "$chart"/ci/*-values.yaml; do
  m=$(basename "$f" -values.yaml)
  [ "$m" = default ] || modes+=("$m")
done

lint() { helm lint --strict "$chart" $(values_of "$1"); }
validate() {
  helm template "$release" "$chart" --namespace "$namespace" $(values_of "$1") \
    | "$python" "$root/tests/chart/builtin_kinds.py" \
    | kubernetes-validate --strict -k "$kube_version" --quiet -
}

echo "helm lint --strict:"
for m in "${modes[@]}"; do check "lint $m" lint "$m"; done

echo "helm template | kubernetes-validate --strict -k $kube_version (built-in kinds):"
for m in "${modes[@]}"; do check "validate $m" validate "$m"; done

echo "pytest tests/chart:"
pytest_log=$logdir/pytest.log
if (cd "$root" && "$python" -m pytest -q -p no:cacheprovider tests/chart >"$pytest_log" 2>&1); then
  passed=$((passed + 1))
  printf '  ok    %s\n' "$(tail -n 1 "$pytest_log" | tr -d '=' | sed 's/^ *//; s/ *$//')"
else
  failed=$((failed + 1))
  failures+=("pytest")
  sed 's/^/        /' "$pytest_log"
  printf '  FAIL  pytest\n'
fi

echo "hadolint:"
check "hadolint --failure-threshold warning Dockerfile" hadolint --failure-threshold warning "$root/Dockerfile"

echo
echo "test-chart: $((SECONDS - start))s, helm $(helm version --short), kubernetes schemas $kube_version"
if [ "$failed" -gt 0 ]; then
  printf 'test-chart: failed: %s\n' "${failures[@]}"
fi
echo "test-chart: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
