# Sourced by the kube-local scripts: which versions, where things live, which ports they use.
#
#   KUBE_VERSION      Kubernetes release: 1.37 (default) or 1.34, or an exact 1.Y.Z with a committed wrapper module
#                     in modules/kubernetes-v1.Y.Z (gen-module.sh writes one)
#   DDG_CACHE         cache root (default ~/.cache/default-deny-guard); binaries go to
#                     $DDG_CACHE/kube-local/kubernetes-vX.Y.Z/bin and .../etcd-vA.B.C/bin, Go's caches to $DDG_CACHE/go
#   KUBE_LOCAL_RUN    state of a running cluster: data, PKI, logs, PIDs, kubeconfig (default $DDG_CACHE/kube-local/run)
#   ETCD_PORT         etcd client port (default 2379); the peer port is ETCD_PORT+1
#   APISERVER_PORT    kube-apiserver secure port (default 6443)

KL_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KL_CACHE="${DDG_CACHE:-$HOME/.cache/default-deny-guard}/kube-local"

kl_log() { printf '[kube-local] %s\n' "$*" >&2; }
kl_die() { printf '[kube-local] ERROR: %s\n' "$*" >&2; exit 1; }

# The newest pinned patch release of each tested minor. A minor given alone resolves to these; an exact version
# must have its own committed module.
KL_DEFAULT_KUBE_VERSION=1.37
kl_resolve_version() {
  local want=${1#v} dirs
  case $want in
    *.*.*) [ -d "$KL_HERE/modules/kubernetes-v$want" ] && { echo "v$want"; return; } ;;
    *.*) dirs=$(cd "$KL_HERE/modules" && ls -d "kubernetes-v$want".* 2>/dev/null | sed 's/^kubernetes-//' | sort -V | tail -n 1)
         [ -n "$dirs" ] && { echo "$dirs"; return; } ;;
  esac
  kl_die "no wrapper module for Kubernetes '$1' in $KL_HERE/modules (have: $(cd "$KL_HERE/modules" && ls -d kubernetes-v* | sed 's/^kubernetes-v//' | tr '\n' ' ')); write one with gen-module.sh kubernetes X.Y.Z"
}
KL_KUBE_VERSION=$(kl_resolve_version "${KUBE_VERSION:-$KL_DEFAULT_KUBE_VERSION}")
KL_KUBE_MINOR=${KL_KUBE_VERSION#v1.}; KL_KUBE_MINOR=${KL_KUBE_MINOR%%.*}
KL_ETCD_VERSION=v3.6.16
KL_BIN="$KL_CACHE/kubernetes-$KL_KUBE_VERSION/bin"
KL_ETCD="$KL_CACHE/etcd-$KL_ETCD_VERSION/bin/etcd"
KL_RUN="${KUBE_LOCAL_RUN:-$KL_CACHE/run}"
KL_ETCD_PORT="${ETCD_PORT:-2379}"
KL_ETCD_PEER_PORT=$((KL_ETCD_PORT + 1))
KL_APISERVER_PORT="${APISERVER_PORT:-6443}"
# Components, in start order; down.sh stops them in reverse.
KL_COMPONENTS=(etcd kube-apiserver kube-controller-manager)
