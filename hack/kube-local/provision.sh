#!/usr/bin/env bash
# Builds a Kubernetes control plane from the Go module proxy: kube-apiserver, kube-controller-manager and kubectl
# from k8s.io/kubernetes at the pinned release (KUBE_VERSION, default the newest pinned 1.37.x), and etcd from
# go.etcd.io/etcd/server/v3, each through the wrapper module committed in hack/kube-local/modules/ (gen-module.sh
# says why one is needed). Every dependency is pinned by that module's go.sum; nothing else is resolved.
#
# Usage: hack/kube-local/provision.sh            (env: KUBE_VERSION, DDG_CACHE; see common.sh)
# Result: $DDG_CACHE/kube-local/kubernetes-vX.Y.Z/bin/{kube-apiserver,kube-controller-manager,kubectl} and
#         $DDG_CACHE/kube-local/etcd-vA.B.C/bin/etcd; prints the Kubernetes bin directory as its last line.
# Idempotent: when the binaries of that version are there it returns at once. Go's module and build caches live
# in $DDG_CACHE/go, so a second version (or a rebuild) reuses what the first downloaded and compiled.
# Safe to run concurrently (a lock serialises runs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start=$SECONDS
mkdir -p "$KL_CACHE"

# One build of a thing at a time: a second run (another CI job, another terminal) waits for it instead of building
# twice. Different releases build side by side (Go's caches are safe for that).
lock() { # lock FD NAME
  eval "exec $1>\"\$KL_CACHE/.provision-$2.lock\""
  flock -w 3600 "$1" || kl_die "timed out waiting for another provision.sh ($KL_CACHE/.provision-$2.lock)"
}

command -v go >/dev/null || kl_die "no Go on PATH: install Go 1.26 or newer"
command -v curl >/dev/null && command -v openssl >/dev/null || {
  kl_log "apt-get install curl openssl"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl openssl ca-certificates >/dev/null
}

export GOMODCACHE="${DDG_CACHE:-$HOME/.cache/default-deny-guard}/go/mod"
export GOCACHE="${DDG_CACHE:-$HOME/.cache/default-deny-guard}/go/build"
# Static binaries, no machine paths in them; -mod=readonly: the committed go.mod/go.sum are the whole truth.
# GOTOOLCHAIN stays as the machine has it (auto): a release whose go.mod wants a newer Go fetches it from the proxy.
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -buildvcs=false"

# build_module DIR OUT VERSION_LDFLAGS PACKAGE...: one `go build` of the packages into OUT, installed atomically.
build_module() {
  local dir=$1 out=$2 ldflags=$3 t0=$SECONDS log tmp
  shift 3
  log=$(dirname "$out")/build.log
  tmp=$out.new
  rm -rf "$tmp"; mkdir -p "$tmp"
  kl_log "building ${*##*/} from $(basename "$dir") with $(go version | cut -d' ' -f3) (log: $(realpath -m "$log"))"
  (cd "$dir" && go build -ldflags "-s -w $ldflags" -o "$tmp/" "$@") >"$log" 2>&1 \
    || { tail -40 "$log" >&2; kl_die "build failed (full log: $(realpath -m "$log"))"; }
  rm -rf "$out"; mv "$tmp" "$out"
  kl_log "built $(basename "$dir") in $((SECONDS - t0)) s"
}

# etcd: the server's main package is the module's root.
lock 8 "etcd-$KL_ETCD_VERSION"
if [ ! -x "$KL_ETCD" ]; then
  build_module "$KL_HERE/modules/etcd-$KL_ETCD_VERSION" "$(dirname "$KL_ETCD")" \
    "-X go.etcd.io/etcd/api/v3/version.GitSHA=$KL_ETCD_VERSION" go.etcd.io/etcd/server/v3
  mv "$(dirname "$KL_ETCD")/server" "$KL_ETCD"  # go build names it after the last path element
fi

lock 9 "kubernetes-$KL_KUBE_VERSION"
if [ "$(cat "$KL_BIN/.version" 2>/dev/null)" != "$KL_KUBE_VERSION" ]; then
  # The version stamp that Kubernetes' own build sets (hack/lib/version.sh), so that /version and kubectl report
  # the real release and kubectl sees no skew.
  mod="$KL_HERE/modules/kubernetes-$KL_KUBE_VERSION"
  [ -f "$mod/go.mod" ] || kl_die "no $mod/go.mod"
  built=$(curl -fsS "$(go env GOPROXY | cut -d, -f1)/k8s.io/kubernetes/@v/$KL_KUBE_VERSION.info" 2>/dev/null \
    | sed -nE 's/.*"Time": *"([^"]+)".*/\1/p' || true)
  ld=
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$KL_KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$KL_KUBE_MINOR -X $p.gitTreeState=clean"
    ld+=" -X $p.buildDate=${built:-1970-01-01T00:00:00Z}"
  done
  build_module "$mod" "$KL_BIN" "$ld" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
  got=$("$KL_BIN/kubectl" version --client -o json | sed -nE 's/.*"gitVersion": *"([^"]+)".*/\1/p')
  [ "$got" = "$KL_KUBE_VERSION" ] || kl_die "built kubectl reports '$got', not $KL_KUBE_VERSION"
  echo "$KL_KUBE_VERSION" >"$KL_BIN/.version"
fi

kl_log "provisioned Kubernetes $KL_KUBE_VERSION and etcd $KL_ETCD_VERSION in $((SECONDS - start)) s: $KL_BIN"
echo "$KL_BIN"
