#!/usr/bin/env bash
# The project's test command (README: "Run it; test it"). CI runs it from .ci/run after the format and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --locked --all-targets

echo "== chart (helm lint, helm template | kubernetes-validate, assertions, hadolint)"
./hack/test-chart.sh
