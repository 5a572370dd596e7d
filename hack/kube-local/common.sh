# Sourced by the kube-local scripts: where things live and which ports they use.
#
#   DDG_CACHE         cache root (default ~/.cache/default-deny-guard); binaries go to $DDG_CACHE/kube-local/bin
#   KUBE_LOCAL_RUN    state of a running cluster: data, PKI, logs, PIDs, kubeconfig (default $DDG_CACHE/kube-local/run)
#   ETCD_PORT         etcd client port (default 2379); the peer port is ETCD_PORT+1
#   APISERVER_PORT    kube-apiserver secure port (default 6443)

KL_CACHE="${DDG_CACHE:-$HOME/.cache/default-deny-guard}/kube-local"
KL_BIN="$KL_CACHE/bin"
KL_RUN="${KUBE_LOCAL_RUN:-$KL_CACHE/run}"
KL_ETCD_PORT="${ETCD_PORT:-2379}"
KL_ETCD_PEER_PORT=$((KL_ETCD_PORT + 1))
KL_APISERVER_PORT="${APISERVER_PORT:-6443}"
# Kubernetes version of Debian's `kubernetes` source package (bookworm: 1.20.5+really1.20.2).
KL_KUBE_VERSION=v1.20.2
KL_ETCD=/usr/bin/etcd
# Components, in start order; down.sh stops them in reverse.
KL_COMPONENTS=(etcd kube-apiserver kube-controller-manager)

kl_log() { printf '[kube-local] %s\n' "$*" >&2; }
kl_die() { printf '[kube-local] ERROR: %s\n' "$*" >&2; exit 1; }
