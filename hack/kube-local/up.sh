#!/usr/bin/env bash
# Starts a throwaway Kubernetes 1.20.2 control plane on 127.0.0.1: etcd, kube-apiserver and kube-controller-manager
# (namespace, garbagecollector, serviceaccount, serviceaccount-token controllers), each time with a fresh data
# directory, a fresh PKI and an admin kubeconfig. No kubelet or scheduler: pods stay Pending.
#
# Usage: hack/kube-local/up.sh    (run provision.sh once before; env: see common.sh, plus KCM=0 to skip the
#                                  controller manager)
# stdout: the kubeconfig path, as the last (and only) line. Progress and errors go to stderr.
# Also writes $KUBE_LOCAL_RUN/env: `source` it for KUBECONFIG and a PATH with the matching kubectl.
# On any failure it prints the log tails, stops what it started and exits non-zero. Stop with down.sh.
#
# Deliberate: the controller manager runs WITHOUT --use-service-account-credentials, so every controller talks to
# the API server as the kubeconfig's user (kube-admin, group system:masters). Namespace teardown therefore reaches
# admission webhooks as `kube-admin`, not `system:serviceaccount:kube-system:namespace-controller`, as on clusters
# set up that way. A webhook must not recognise the namespace controller by its user name alone.
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"
start=$SECONDS

for b in kube-apiserver kube-controller-manager kubectl; do
  [ -x "$KL_BIN/$b" ] || kl_die "no $KL_BIN/$b: run hack/kube-local/provision.sh first"
done
[ -x "$KL_ETCD" ] || kl_die "no $KL_ETCD: run hack/kube-local/provision.sh first (Debian package etcd-server)"

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
openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
rm -f "$P/ca.srl"

KUBECONFIG_FILE=$KL_RUN/kubeconfig
cat >"$KUBECONFIG_FILE" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kube-local
  cluster:
    server: https://127.0.0.1:$KL_APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$P/ca.crt")
users:
- name: kube-admin
  user:
    client-certificate-data: $(base64 -w0 "$P/admin.crt")
    client-key-data: $(base64 -w0 "$P/admin.key")
contexts:
- name: kube-local
  context: {cluster: kube-local, user: kube-admin}
current-context: kube-local
EOF
chmod 600 "$KUBECONFIG_FILE"

# --- etcd (Debian's 3.4). No fsync: the data is thrown away anyway, and it makes etcd much faster on slow disks.
launch etcd "$KL_ETCD" --name kube-local --data-dir "$KL_RUN/data/etcd" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$KL_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$KL_ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$KL_ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$KL_ETCD_PEER_PORT" \
  --initial-cluster "kube-local=http://127.0.0.1:$KL_ETCD_PEER_PORT"
wait_for etcd 30 curl -fsS "http://127.0.0.1:$KL_ETCD_PORT/health"

# --- kube-apiserver. Admission: the default plugins plus the two webhook ones (NamespaceLifecycle is a default
# anyway), minus ServiceAccount, which would make every pod wait for a token. No insecure port; the admin
# authenticates with its client certificate.
launch kube-apiserver "$KL_BIN/kube-apiserver" \
  --advertise-address=127.0.0.1 --bind-address=127.0.0.1 --secure-port="$KL_APISERVER_PORT" --insecure-port=0 \
  --etcd-servers="http://127.0.0.1:$KL_ETCD_PORT" --service-cluster-ip-range=10.0.0.0/24 \
  --endpoint-reconciler-type=none --cert-dir="$KL_RUN/data/apiserver-certs" \
  --client-ca-file="$P/ca.crt" --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --authorization-mode=RBAC \
  --enable-admission-plugins=NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
  --disable-admission-plugins=ServiceAccount --profiling=false
readyz() {
  curl -fsS --max-time 2 --cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key" \
    "https://127.0.0.1:$KL_APISERVER_PORT/readyz" | grep -qx ok
}
wait_for kube-apiserver 60 readyz

# --- kube-controller-manager, under the admin's kubeconfig (see the header: no per-controller service accounts).
if [ "${KCM:-1}" != 0 ]; then
  launch kube-controller-manager "$KL_BIN/kube-controller-manager" --kubeconfig="$KUBECONFIG_FILE" \
    --secure-port=0 --port=0 --leader-elect=false \
    --controllers=namespace,garbagecollector,serviceaccount,serviceaccount-token \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt"
  # The serviceaccount controller creating default/default shows the controller manager is connected and running.
  wait_for kube-controller-manager 30 \
    "$KL_BIN/kubectl" --kubeconfig="$KUBECONFIG_FILE" --request-timeout=2s -n default get serviceaccount default
fi

cat >"$KL_RUN/env" <<EOF
export KUBECONFIG=$KUBECONFIG_FILE
export PATH=$KL_BIN:\$PATH
export KUBE_LOCAL_APISERVER=https://127.0.0.1:$KL_APISERVER_PORT
EOF
trap - ERR
kl_log "up in $((SECONDS - start)) s: apiserver https://127.0.0.1:$KL_APISERVER_PORT, etcd 127.0.0.1:$KL_ETCD_PORT, logs and PIDs in $KL_RUN"
echo "$KUBECONFIG_FILE"
