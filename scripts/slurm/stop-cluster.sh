#!/usr/bin/env bash
# Stop the cluster that start-cluster.sh started from STATE_DIR, and wait until every daemon is gone.
#
# Usage: scripts/slurm/stop-cluster.sh [--purge] [STATE_DIR]
#   STATE_DIR defaults to $FMRI2IMG_SLURM_DIR, else /tmp/fmri2img-slurm (as for start-cluster.sh).
#   --purge also deletes STATE_DIR (Slurm state and accounting database together).
# Order: cancel every job (and wait for the queue to drain), then slurmd, slurmctld, slurmdbd, mariadbd,
# munged, each by the PID in its PID file: SIGTERM, then SIGKILL after STOP_WAIT_S. A daemon that exited but
# is not yet reaped by PID 1 (a zombie; ~2 s where PID 1 is not an init) counts as stopped.
# Exit status: 0 when all are stopped (or none was running), 1 when one survived SIGKILL.
set -u

purge=0
if [ "${1:-}" = --purge ]; then purge=1; shift; fi
STATE=${1:-${FMRI2IMG_SLURM_DIR:-/tmp/fmri2img-slurm}}
STOP_WAIT_S=15        # SIGTERM -> SIGKILL
DRAIN_WAIT_S=10       # scancel -> empty queue
log() { echo "stop-cluster: $*" >&2; }

running() {  # running PID: alive and not a zombie
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [ "$(echo "${stat##*) }" | cut -d' ' -f1)" != Z ]
}

cancel_jobs() {
    export SLURM_CONF="$STATE/etc/slurm.conf"
    [ -f "$SLURM_CONF" ] || return 0
    timeout 5 scontrol ping 2>/dev/null | grep -q UP || return 0
    local ids
    ids=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    [ -n "${ids// /}" ] || return 0
    log "cancelling jobs: $ids"
    # shellcheck disable=SC2086 # one id per word
    scancel $ids
    for _ in $(seq $((DRAIN_WAIT_S * 5))); do [ -z "$(squeue -h 2>/dev/null)" ] && return 0; sleep 0.2; done
    log "jobs still listed after ${DRAIN_WAIT_S}s: $(squeue -h -o '%i %T' | tr '\n' ' ')"
}

stop_daemon() {  # stop_daemon NAME PIDFILE
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if ! running "$pid"; then rm -f "$pidfile"; return 0; fi
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq $((STOP_WAIT_S * 10))); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then
        log "$name (pid $pid) ignored SIGTERM for ${STOP_WAIT_S}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
        for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done
    fi
    if running "$pid"; then log "$name (pid $pid) is still running"; return 1; fi
    rm -f "$pidfile"
    log "stopped $name (pid $pid)"
}

[ -d "$STATE" ] || { log "no cluster state in $STATE; nothing to stop"; exit 0; }
cancel_jobs
rc=0
stop_daemon slurmd "$STATE/run/slurmd.pid" || rc=1
stop_daemon slurmctld "$STATE/run/slurmctld.pid" || rc=1
stop_daemon slurmdbd "$STATE/run/slurmdbd.pid" || rc=1
stop_daemon mariadbd "$STATE/mysql/mariadbd.pid" || rc=1
stop_daemon munged "$STATE/munge/munged.pid" || rc=1
if [ "$purge" = 1 ] && [ "$rc" = 0 ]; then rm -rf "$STATE" && log "removed $STATE"; fi
exit $rc
