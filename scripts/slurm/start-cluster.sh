#!/usr/bin/env bash
# Start a throw-away single-node Slurm cluster with accounting, for fmri2img's tests and CI.
#
# Usage (as root, Debian 12, no systemd needed):
#     eval "$(scripts/slurm/start-cluster.sh [STATE_DIR])"     # then: make test / pytest tests/test_slurm.py
#     scripts/slurm/stop-cluster.sh [STATE_DIR]
#
# STATE_DIR (default: $FMRI2IMG_SLURM_DIR, else /tmp/fmri2img-slurm) holds everything the cluster writes:
# configs, munge key and socket, the MariaDB data directory, Slurm's state and spool, logs and PID files.
# Nothing is written to /etc/slurm, /etc/munge, /run/munge, /run/mysqld or /var/lib/mysql, so the cluster
# neither needs the directories that systemd would create nor touches a system installation.
# Slurm state and the accounting database live side by side: reuse STATE_DIR to keep both (job ids go on),
# delete it (or pass --fresh) to reset both; resetting one without the other confuses job ids.
#
# Daemons, in start order: munged -> mariadbd -> slurmdbd -> slurmctld -> slurmd (node = `hostname -s`,
# partition "debug", CPUs = nproc, RealMemory as `slurmd -C` measures it). Daemons already running for
# STATE_DIR are kept (the script is idempotent). Missing Debian packages are installed with apt-get.
# stdout: the environment to export (SLURM_CONF, FMRI2IMG_SLURM_DIR); stderr: what was started.
# Env: FMRI2IMG_SLURM_CPUS, FMRI2IMG_SLURM_MEM_MB override the node's size.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
# Commands those packages provide (a missing one triggers the install).
COMMANDS=(slurmctld slurmd sbatch sacct munged slurmdbd mariadbd mariadb-install-db)
WAIT_S=60             # how long to wait for each daemon to answer
CLUSTER=fmri2img      # Slurm ClusterName (also the accounting database's table prefix)
CRED_EXPIRE_S=10      # job credential lifetime = how long a requeued job waits (Slurm's default: 120 s)

fresh=0
if [ "${1:-}" = --fresh ]; then fresh=1; shift; fi
STATE=${1:-${FMRI2IMG_SLURM_DIR:-/tmp/fmri2img-slurm}}
log() { echo "start-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it starts munged, mariadbd and the Slurm daemons); got uid $(id -u)."
case "$STATE" in /*) ;; *) STATE="$PWD/$STATE" ;; esac
T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# alive PIDFILE: the process named in PIDFILE runs (a zombie, exited but not yet reaped, does not count).
alive() {
    [ -s "$1" ] || return 1
    local stat
    stat=$(cat "/proc/$(cat "$1")/stat" 2>/dev/null) || return 1
    [ "$(echo "${stat##*) }" | cut -d' ' -f1)" != Z ]
}
# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s until it succeeds.
wait_for() {
    local seconds=$1 what=$2; shift 2
    local tries=$((seconds * 5))
    for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    die "$what did not come up within ${seconds}s; see the logs in $STATE/log."
}

install_packages() {
    local missing=()
    for cmd in "${COMMANDS[@]}"; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    apt-get update -qq
    # Where the packages start their own services (systemd hosts), those use the system paths and sockets
    # and do not collide with this cluster (the Slurm ones find no /etc/slurm/slurm.conf and exit).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    log "packages installed at $(elapsed)s"
}

make_dirs() {
    if [ "$fresh" = 1 ] && [ -d "$STATE" ]; then
        for pidfile in "$STATE"/run/*.pid "$STATE/munge/munged.pid" "$STATE/mysql/mariadbd.pid"; do
            alive "$pidfile" && die "--fresh: $(basename "$pidfile" .pid) still runs from $STATE; stop it first."
        done
        rm -rf "$STATE"
    fi
    install -d -m 0755 "$STATE" "$STATE/etc" "$STATE/log" "$STATE/run" "$STATE/spool/ctld" "$STATE/spool/d"
    install -d -o munge -g munge -m 0755 "$STATE/munge"   # munged: not writable by others, searchable by all
    install -d -o mysql -g mysql -m 0755 "$STATE/mysql"
}

start_munge() {
    local key="$STATE/munge/munge.key"
    [ -s "$key" ] || { dd if=/dev/urandom of="$key" bs=1024 count=1 status=none; }
    chown munge:munge "$key" && chmod 0400 "$key"
    if ! alive "$STATE/munge/munged.pid"; then
        runuser -u munge -- munged --socket="$STATE/munge/munge.socket" --key-file="$key" \
            --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
            --seed-file="$STATE/munge/munged.seed"
    fi
    local socket="$STATE/munge/munge.socket"
    wait_for "$WAIT_S" munged sh -c "munge -S '$socket' -n </dev/null | unmunge -S '$socket'"
}

start_mariadb() {
    local data="$STATE/mysql/data"
    if [ ! -d "$data/mysql" ]; then
        mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=socket \
            --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $STATE/log."
    fi
    if ! alive "$STATE/mysql/mariadbd.pid"; then
        # --no-defaults: ignore /etc/mysql (its socket and datadir are the system server's).
        setsid mariadbd --no-defaults --user=mysql --datadir="$data" --socket="$STATE/mysql/mariadbd.sock" \
            --pid-file="$STATE/mysql/mariadbd.pid" --log-error="$STATE/mysql/mariadbd.log" --skip-networking \
            --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --innodb-lock-wait-timeout=900 \
            </dev/null >/dev/null 2>&1 &
    fi
    wait_for "$WAIT_S" mariadbd mariadb-admin --no-defaults --socket="$STATE/mysql/mariadbd.sock" ping
}

write_configs() {
    local host cpus mem
    host=$(hostname -s)
    cpus=${FMRI2IMG_SLURM_CPUS:-$(nproc)}
    # slurmd -C measures the node as slurmd will; a configured RealMemory above it would drain the node.
    mem=${FMRI2IMG_SLURM_MEM_MB:-$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')}
    [ -n "$mem" ] || die "cannot read RealMemory from 'slurmd -C'; set FMRI2IMG_SLURM_MEM_MB."
    local socket="$STATE/munge/munge.socket"  # in AuthInfo, and AccountingStoragePass for slurmdbd
    # SlurmctldHost must equal `hostname -s`; the (127.0.0.1) address and NodeAddr avoid DNS look-ups.
    # batch_sched_delay=0, sched_min_interval=0: start a submitted batch job at once (default: ~3 s later);
    # sched_interval=2: look at pending jobs every 2 s (default 60 s; a requeued job waits for it).
    # KillWait=5: SIGKILL 5 s after SIGTERM on cancel/time-out (default 30 s; submitit ignores SIGTERM).
    # cred_expire: a requeued job may start again only once its old credential expired (default 120 s).
    cat >"$STATE/etc/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket,cred_expire=$CRED_EXPIRE_S
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=1
ReturnToService=2
JobRequeue=1
KillWait=5
MailProg=/bin/true
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePass=$socket
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$((mem / cpus))
CONF
    cat >"$STATE/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$socket
DbdHost=$host
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=${CLUSTER}_acct_db
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
CONF
    chmod 0600 "$STATE/etc/slurmdbd.conf"   # slurmdbd refuses a config others can read
    echo "$host" >"$STATE/run/node"
}

start_slurm() {
    local host
    host=$(cat "$STATE/run/node")
    export SLURM_CONF="$STATE/etc/slurm.conf"
    # root reaches MariaDB through its socket (unix_socket authentication, no password); the client
    # library takes the socket's path from MYSQL_UNIX_PORT (slurmdbd.conf has no key for it).
    # slurmdbd has no -f: it reads slurmdbd.conf next to $SLURM_CONF.
    alive "$STATE/run/slurmdbd.pid" || MYSQL_UNIX_PORT="$STATE/mysql/mariadbd.sock" slurmdbd
    wait_for "$WAIT_S" slurmdbd sacctmgr -n list cluster
    alive "$STATE/run/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
    wait_for "$WAIT_S" slurmctld sh -c 'scontrol ping | grep -q UP'
    alive "$STATE/run/slurmd.pid" || slurmd -f "$SLURM_CONF" -N "$host"
    wait_for "$WAIT_S" "node $host" sh -c "sinfo -h -n '$host' -o %T | grep -qx idle"
    # accounting must know the cluster before jobs end, or their final state is lost
    wait_for "$WAIT_S" "cluster registration" sh -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER"
}

report() {
    local name pidfile
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        case $name in
            munged) pidfile="$STATE/munge/munged.pid" ;;
            mariadbd) pidfile="$STATE/mysql/mariadbd.pid" ;;
            *) pidfile="$STATE/run/$name.pid" ;;
        esac
        log "$name pid $(cat "$pidfile")"
    done
    log "node $(sinfo -h -o '%N %T cpus=%c mem=%mMB partition=%P') ready in $(elapsed)s; state in $STATE"
    printf 'export SLURM_CONF=%q\nexport FMRI2IMG_SLURM_DIR=%q\n' "$STATE/etc/slurm.conf" "$STATE" \
        | tee "$STATE/env.sh"
}

install_packages
make_dirs
start_munge
start_mariadb
write_configs
start_slurm
report
