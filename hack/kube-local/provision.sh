#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kubectl (Kubernetes 1.20.2) from Debian's `kubernetes` source
# package with Debian's Go, and installs etcd from Debian: a real control plane from Debian's registry alone.
#
# Usage: hack/kube-local/provision.sh        (env: DDG_CACHE, see common.sh)
# Result: $DDG_CACHE/kube-local/bin/{kube-apiserver,kube-controller-manager,kubectl}; etcd is /usr/bin/etcd.
# Idempotent: when the binaries are there it only checks the Debian packages and returns in about a second.
# Cold: 7-13 min on 2 cores (depends on what else runs) and a few GB of disk while building (dropped afterwards).
# Safe to run concurrently (a lock serialises runs). Needs root (apt-get) unless the packages are already installed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start=$SECONDS
mkdir -p "$KL_CACHE"

# One provisioner at a time: a second CI job or terminal waits here instead of building twice.
exec 9>"$KL_CACHE/.provision.lock"
flock -w 1800 9 || kl_die "timed out waiting for another provision.sh ($KL_CACHE/.provision.lock)"

# Debian packages. etcd-server is needed at run time; the rest only to build.
# golang-github-{modern-go-reflect2,json-iterator-go}-dev: see the vendor fix below.
runtime_pkgs=(etcd-server curl openssl ca-certificates)
build_pkgs=(golang-go make rsync golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)
apt_install() {
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  kl_log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

have_binaries() {
  local b
  for b in kube-apiserver kube-controller-manager kubectl; do [ -x "$KL_BIN/$b" ] || return 1; done
  [ "$(cat "$KL_BIN/.version" 2>/dev/null)" = "$KL_KUBE_VERSION" ]
}

if have_binaries; then
  apt_install "${runtime_pkgs[@]}"
  kl_log "already provisioned: $KL_BIN ($KL_KUBE_VERSION) in $((SECONDS - start)) s"
  echo "$KL_BIN"
  exit 0
fi

apt_install "${runtime_pkgs[@]}" "${build_pkgs[@]}"

# Everything transient lives in W and is removed at the end (and at the start, after a crashed run).
W="$KL_CACHE/build"
rm -rf "$W"
mkdir -p "$W/apt/sources" "$W/apt/lists/partial" "$W/apt/cache/archives/partial" "$W/srcpkg" "$W/src" "$W/home"

# The source package, fetched through a private apt configuration that mirrors the machine's Debian entries as
# deb-src, so the system's apt setup is left untouched. Handles both deb822 (*.sources) and one-line sources.list.
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && grep -qiE '^URIs:.*debian' "$f" || continue
  sed -E 's/^Types:.*/Types: deb-src/' "$f" >"$W/apt/sources/$(basename "$f")"
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  sed -nE 's/^deb(\s+(\[[^]]*\]\s+)?\S*debian\S*\s)/deb-src\1/p' "$f" >>"$W/apt/sources/oneline.list"
done
[ -n "$(ls -A "$W/apt/sources")" ] || kl_die "no Debian entries found in /etc/apt to derive deb-src from"
apt_opts=(-o APT::Sandbox::User=root -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$W/apt/sources"
          -o Dir::State::Lists="$W/apt/lists" -o Dir::Cache="$W/apt/cache")
kl_log "fetching Debian source package 'kubernetes'"
apt-get "${apt_opts[@]}" update -qq
(cd "$W/srcpkg" && apt-get "${apt_opts[@]}" source --download-only kubernetes >/dev/null)
orig=$(ls "$W"/srcpkg/kubernetes_*.orig.tar.* 2>/dev/null | head -1)
[ -n "$orig" ] || kl_die "no kubernetes_*.orig.tar.* downloaded"
tar xf "$orig" -C "$W/src"
S=$(ls -d "$W"/src/*/ | head -1)
S=${S%/}
grep -q "gitMajor\|KUBE_GIT" "$S/hack/lib/version.sh" || kl_die "unexpected source tree in $S"

# Fix: the vendored github.com/modern-go/reflect2 1.0.1 is broken with Go >= 1.18: the apiserver dies with
# "fatal error: fault" / "unexpected signal" the first time json-iterator decodes through it (e.g. a JSON patch from
# a mutating webhook). Debian packages the fixed reflect2 1.0.2 and the matching json-iterator 1.1.12 as Go source.
for m in github.com/modern-go/reflect2 github.com/json-iterator/go; do
  [ -d "/usr/share/gocode/src/$m" ] || kl_die "missing /usr/share/gocode/src/$m"
  rm -rf "${S:?}/vendor/$m"
  cp -r "/usr/share/gocode/src/$m" "$S/vendor/$m"
done

# A tarball has no git metadata. Debian's orig tarball is a `git archive` whose version.sh had its $Format$
# placeholders filled in (v1.20.2, commit faecb196...); only if that is missing do we pass the version explicitly,
# so that `kubectl version` and the apiserver's /version never report v0.0.0-master and kubectl sees no skew.
version_env=()
if ! grep -q "tag: $KL_KUBE_VERSION" "$S/hack/lib/version.sh"; then
  major=${KL_KUBE_VERSION#v}; major=${major%%.*}
  minor=${KL_KUBE_VERSION#v*.}; minor=${minor%%.*}
  printf "KUBE_GIT_VERSION='%s'\nKUBE_GIT_TREE_STATE='archive'\nKUBE_GIT_MAJOR='%s'\nKUBE_GIT_MINOR='%s'\n" \
    "$KL_KUBE_VERSION" "$major" "$minor" >"$W/version.env"
  version_env=(KUBE_GIT_VERSION_FILE="$W/version.env")
fi

kl_log "building kube-apiserver, kube-controller-manager, kubectl with $(go version | cut -d' ' -f3) (log: $KL_CACHE/build.log)"
(
  cd "$S"
  export HOME="$W/home" GOPATH="$W/home/go" GOCACHE="$W/gocache" GOPROXY=off GOFLAGS= GONOSUMDB= GOSUMDB=off
  env "${version_env[@]}" make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kubectl"
) >"$KL_CACHE/build.log" 2>&1 || { tail -40 "$KL_CACHE/build.log" >&2; kl_die "build failed (full log: $KL_CACHE/build.log)"; }

# Install atomically-ish: copy next to the target, then rename; the version stamp is written last.
mkdir -p "$KL_BIN"
rm -f "$KL_BIN/.version"
for b in kube-apiserver kube-controller-manager kubectl; do
  cp "$S/_output/bin/$b" "$KL_BIN/.$b.new"
  mv -f "$KL_BIN/.$b.new" "$KL_BIN/$b"
done
"$KL_BIN/kubectl" version --client --short 2>/dev/null | grep -q "$KL_KUBE_VERSION" \
  || kl_die "built kubectl does not report $KL_KUBE_VERSION: $("$KL_BIN/kubectl" version --client 2>&1)"
echo "$KL_KUBE_VERSION" >"$KL_BIN/.version"

# Keep the binaries (~300 MB), drop the source tree and the Go build cache (several GB).
chmod -R u+w "$W" 2>/dev/null || true
rm -rf "$W"
kl_log "provisioned $KL_BIN ($KL_KUBE_VERSION) in $((SECONDS - start)) s"
echo "$KL_BIN"
