#!/usr/bin/env bash
# Starts a throwaway Kubernetes control plane on 127.0.0.1 at the version provision.sh built (KUBE_VERSION, see
# common.sh): etcd, kube-apiserver and kube-controller-manager, each time with a fresh data directory, a fresh PKI
# and an admin kubeconfig. No kubelet or scheduler: pods stay Pending.
#
# What a current API server needs and a real cluster has: a service-account issuer and signing key, RBAC, the
# admission plugins ValidatingAdmissionPolicy and MutatingAdmissionPolicy (on 1.34/1.35 behind the
# MutatingAdmissionPolicy feature gate with admissionregistration.k8s.io/v1beta1 served), and an audit log
# ($KUBE_LOCAL_RUN/audit.log, policy in audit-policy.yaml beside this script) that records each request's metadata
# with the webhooks' auditAnnotations. The controller manager runs the namespace, garbage-collector and
# service-account controllers, each under its own service account (--use-service-account-credentials), as
# kubeadm sets it up: teardown DELETEs reach webhooks as system:serviceaccount:kube-system:namespace-controller.
# KCM_SERVICE_ACCOUNTS=0 runs them all under the controller manager's own identity instead
# (system:kube-controller-manager), as some clusters do; a webhook must then recognise a teardown by the
# namespace's deletionTimestamp, not by the user name.
#
# Usage: hack/kube-local/up.sh    (run provision.sh once before; env: see common.sh, plus KCM=0 to skip the
#                                  controller manager, KCM_SERVICE_ACCOUNTS=0 as above)
# stdout: the kubeconfig path, as the last (and only) line. Progress and errors go to stderr.
# Also writes $KUBE_LOCAL_RUN/env: `source` it for KUBECONFIG and a PATH with the matching kubectl.
# On any failure it prints the log tails, stops what it started and exits non-zero. Stop with down.sh.
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"
start=$SECONDS

for b in kube-apiserver kube-controller-manager kubectl; do
  [ -x "$KL_BIN/$b" ] || kl_die "no $KL_BIN/$b: run hack/kube-local/provision.sh first"
done
[ -x "$KL_ETCD" ] || kl_die "no $KL_ETCD: run hack/kube-local/provision.sh first "

# Whatever an earlier run left behind (by PID file, or by command line pointing into $KL_RUN) goes first.
bash "$HERE/down.sh" || kl_die "could not stop the previous run (see above)"

[ "$(printf '%s\n' "$KL_ETCD_PORT" "$KL_ETCD_PEER_PORT" "$KL_APISERVER_PORT" | sort -u | wc -l)" = 3 ] \
  || kl_die "ports overlap: etcd $KL_ETCD_PORT (+1 for peers), apiserver $KL_APISERVER_PORT"
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$KL_ETCD_PORT" "$KL_ETCD_PEER_PORT" "$KL_APISERVER_PORT"; do
  port_busy "$p" && kl_die "127.0.0.1:$p is already in use (set ETCD_PORT / APISERVER_PORT, see common.sh)"
done

rm -rf "$KL_RUN"
mkdir -p "$KL_RUN/pki" "$KL_RUN/data"
P=$KL_RUN/pki

started=()
fail() {
  local n
  kl_log "ERROR: $*"
  for n in "${started[@]}"; do
    printf '\n----- last lines of %s -----\n' "$KL_RUN/$n.log" >&2
    tail -n 25 "$KL_RUN/$n.log" >&2 || true
  done
  bash "$HERE/down.sh" >/dev/null 2>&1 || true
  exit 1
}
trap 'fail "up.sh failed at line $LINENO"' ERR

# launch NAME CMD...: start in the background with its own log, record the PID at once.
launch() {
  local n=$1; shift
  "$@" >"$KL_RUN/$n.log" 2>&1 </dev/null &
  echo $! >"$KL_RUN/$n.pid"
  started+=("$n")
}
alive() { kill -0 "$(cat "$KL_RUN/$1.pid")" 2>/dev/null; }

# wait_for NAME SECONDS CHECK...: poll CHECK every 0.2 s; give up when NAME dies or time runs out.
wait_for() {
  local n=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    alive "$n" || fail "$n exited during startup"
    sleep 0.2
  done
  fail "$n not ready after ${secs} s"
}

# --- PKI: cluster CA; apiserver serving cert; admin client cert (O=system:masters); service-account key pair.
mkcert() { # mkcert NAME SUBJECT EXTENSIONS
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" \
    -keyout "$P/$1.key" -out "$P/$1.csr" 2>/dev/null
  printf '%b' "$3" >"$P/$1.ext"
  openssl x509 -req -in "$P/$1.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial -days 30 \
    -extfile "$P/$1.ext" -out "$P/$1.crt" 2>/dev/null
  rm -f "$P/$1.csr" "$P/$1.ext"
}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=kube-local-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$P/ca.key" -out "$P/ca.crt" 2>/dev/null
mkcert apiserver /CN=kube-apiserver \
  'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n'
mkcert admin "/O=system:masters/CN=kube-admin" \
  'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
# The controller manager's identity. Under its controllers' service accounts it needs only the role the API server
# bootstraps for system:kube-controller-manager; acting for them all under its own name, it needs their rights too,
# which clusters set up that way give it (here: the group system:masters).
kcm_subject=/CN=system:kube-controller-manager
[ "${KCM_SERVICE_ACCOUNTS:-1}" = 0 ] && kcm_subject="/O=system:masters$kcm_subject"
mkcert controller-manager "$kcm_subject" \
  'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
rm -f "$P/ca.srl"

# kubeconfig FILE USER CERT: a kubeconfig for the API server with a client certificate.
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kube-local
  cluster:
    server: https://127.0.0.1:$KL_APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$P/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$P/$3.crt")
    client-key-data: $(base64 -w0 "$P/$3.key")
contexts:
- name: kube-local
  context: {cluster: kube-local, user: $2}
current-context: kube-local
EOF
  chmod 600 "$1"
}
KUBECONFIG_FILE=$KL_RUN/kubeconfig
kubeconfig "$KUBECONFIG_FILE" kube-admin admin
kubeconfig "$KL_RUN/controller-manager.kubeconfig" system:kube-controller-manager controller-manager

# --- etcd. No fsync: the data is thrown away anyway, and it makes etcd much faster on slow disks.
launch etcd "$KL_ETCD" --name kube-local --data-dir "$KL_RUN/data/etcd" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$KL_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$KL_ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$KL_ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$KL_ETCD_PEER_PORT" \
  --initial-cluster "kube-local=http://127.0.0.1:$KL_ETCD_PEER_PORT" --log-level=warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$KL_ETCD_PORT/health"

# --- kube-apiserver. Admission: the default plugins (which include NamespaceLifecycle, the two webhook plugins and
# ValidatingAdmissionPolicy) named explicitly, plus MutatingAdmissionPolicy, minus ServiceAccount, which would make
# every pod wait for a token. The admin authenticates with its client certificate.
version_flags=()
if [ "$KL_KUBE_MINOR" -lt 36 ]; then
  # MutatingAdmissionPolicy is beta in 1.34 and 1.35: off unless its gate and its API version are switched on.
  version_flags+=(--feature-gates=MutatingAdmissionPolicy=true --runtime-config=admissionregistration.k8s.io/v1beta1=true)
fi
launch kube-apiserver "$KL_BIN/kube-apiserver" \
  --advertise-address=127.0.0.1 --bind-address=127.0.0.1 --secure-port="$KL_APISERVER_PORT" \
  --etcd-servers="http://127.0.0.1:$KL_ETCD_PORT" --service-cluster-ip-range=10.0.0.0/24 \
  --endpoint-reconciler-type=none --cert-dir="$KL_RUN/data/apiserver-certs" \
  --client-ca-file="$P/ca.crt" --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --authorization-mode=RBAC \
  --enable-admission-plugins=NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,MutatingAdmissionPolicy \
  --disable-admission-plugins=ServiceAccount \
  --audit-policy-file="$HERE/audit-policy.yaml" --audit-log-path="$KL_RUN/audit.log" --audit-log-format=json \
  --audit-log-maxbackup=1 --audit-log-maxsize=200 \
  --profiling=false "${version_flags[@]}"
readyz() {
  curl -fsS --max-time 2 --cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key" \
    "https://127.0.0.1:$KL_APISERVER_PORT/readyz" | grep -qx ok
}
wait_for kube-apiserver 60 readyz

# --- kube-controller-manager, as system:kube-controller-manager (the role the API server bootstraps for it).
if [ "${KCM:-1}" != 0 ]; then
  sa_credentials=true
  [ "${KCM_SERVICE_ACCOUNTS:-1}" = 0 ] && sa_credentials=false
  launch kube-controller-manager "$KL_BIN/kube-controller-manager" \
    --kubeconfig="$KL_RUN/controller-manager.kubeconfig" --secure-port=0 --leader-elect=false \
    --controllers=namespace,garbagecollector,serviceaccount,serviceaccount-token \
    --use-service-account-credentials="$sa_credentials" \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt"
  # The serviceaccount controller creating default/default shows the controller manager is connected and running.
  wait_for kube-controller-manager 60 \
    "$KL_BIN/kubectl" --kubeconfig="$KUBECONFIG_FILE" --request-timeout=2s -n default get serviceaccount default
fi

cat >"$KL_RUN/env" <<EOF
export KUBECONFIG=$KUBECONFIG_FILE
export PATH=$KL_BIN:\$PATH
export KUBE_LOCAL_APISERVER=https://127.0.0.1:$KL_APISERVER_PORT
export KUBE_LOCAL_VERSION=$KL_KUBE_VERSION
export KUBE_LOCAL_BIN=$KL_BIN
export KUBE_LOCAL_AUDIT_LOG=$KL_RUN/audit.log
EOF
trap - ERR
kl_log "up in $((SECONDS - start)) s: Kubernetes $KL_KUBE_VERSION, apiserver https://127.0.0.1:$KL_APISERVER_PORT, etcd 127.0.0.1:$KL_ETCD_PORT, logs and PIDs in $KL_RUN"
echo "$KUBECONFIG_FILE"
