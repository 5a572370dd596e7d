#!/usr/bin/env bash
# The project's test command (README: "Run it; test it"). CI runs it from .ci/run after the format and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --locked --all-targets

echo "== chart (helm lint, helm template | kubernetes-validate, assertions, hadolint)"
./hack/test-chart.sh

# End-to-end: a real Kubernetes 1.37 control plane on 127.0.0.1, the release binary, the chart's webhook
# configurations (hack/e2e.sh; the first run on a machine builds the control plane from its Go modules: ~15 min).
if [ "${DDG_E2E:-1}" = 0 ]; then
  echo "== end-to-end SKIPPED (DDG_E2E=0)"
else
  echo "== end-to-end (hack/e2e.sh)"
  ./hack/e2e.sh
  # Rolling restarts behind a load balancer, through the control plane and with the load harness: it needs the
  # control plane and the release binary that the end-to-end step built.
  echo "== rollout (hack/rollout-test.sh, short)"
  ROLLOUT_SHORT=1 ./hack/rollout-test.sh
fi
