#!/usr/bin/env bash
# Stops the control plane that up.sh started, by the PIDs it saved, newest component first.
# Also stops leftovers of an earlier crashed run: any etcd/kube-apiserver/kube-controller-manager process whose
# command line points into this run directory, even if its PID file is gone.
# Usage: hack/kube-local/down.sh      (env: DDG_CACHE, KUBE_LOCAL_RUN; see common.sh). Leaves logs in place.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# True if PID is alive and is one of our components started for this run directory (guards against PID reuse).
ours() {
  local pid=$1 cmd
  [ -r "/proc/$pid/cmdline" ] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  case "${cmd%% *}" in */etcd|etcd|*/kube-apiserver|*/kube-controller-manager) ;; *) return 1 ;; esac
  [[ "$cmd" == *"$KL_RUN/"* ]]
}

# stop NAME PID: SIGTERM, up to 10 s grace, then SIGKILL and up to 2 s more.
stop() {
  local name=$1 pid=$2 i
  ours "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 100); do ours "$pid" || break; sleep 0.1; done
  if ours "$pid"; then
    kl_log "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    for i in $(seq 1 20); do ours "$pid" || break; sleep 0.1; done
  fi
  ours "$pid" && { kl_log "ERROR: $name (pid $pid) is still running"; return 1; }
  kl_log "stopped $name (pid $pid)"
}

rc=0
for ((i = ${#KL_COMPONENTS[@]} - 1; i >= 0; i--)); do
  n=${KL_COMPONENTS[i]}
  f="$KL_RUN/$n.pid"
  [ -f "$f" ] || continue
  stop "$n" "$(cat "$f")" || rc=1
  rm -f "$f"
done

# Leftovers whose PID file was lost (an up.sh killed between start and write, a wiped run directory, ...),
# again newest component first: an apiserver whose etcd is gone takes its whole grace period to stop.
for ((i = ${#KL_COMPONENTS[@]} - 1; i >= 0; i--)); do
  n=${KL_COMPONENTS[i]}
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    ours "$pid" || continue
    exe=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null | cut -d' ' -f1)
    [ "${exe##*/}" = "$n" ] || continue
    stop "leftover $n" "$pid" || rc=1
  done
done
exit $rc
