#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying the slurm profile end to end.
#
#   sudo scripts/slurm_local.sh                       # start, run `sinfo` and an sbatch smoke test, stop
#   sudo scripts/slurm_local.sh CMD [ARGS...]         # start, run CMD with SLURM_CONF set, stop
#   sudo scripts/slurm_local.sh .venv/bin/snakemake --profile profiles/slurm --slurm-no-account \
#        --default-resources slurm_partition=debug -- data/qa/normalize_report.json
#
# As root: installs Debian's slurm-wlm and munge if missing, writes a slurm.conf naming this host at
# 127.0.0.1 (all CPUs, proctrack/linuxproc, task/none, select/cons_tres, no accounting) with its state
# in a temporary directory, starts munged, slurmctld and slurmd, runs the command and stops the
# daemons it started (also on error or Ctrl-C). Without accounting, sacct cannot answer: the slurm
# profile polls with squeue (slurm-status-command: squeue), and MinJobAge keeps finished jobs visible.
# Set SLURM_LOCAL_KEEP=1 to leave the state directory (logs) behind, or SLURM_LOCAL_STATE=DIR to put
# the state (slurm.conf, slurmctld.log, slurmd.log) in DIR, which is kept (the caller owns it).
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "slurm_local.sh: run as root (it installs packages and starts daemons)" >&2
    exit 2
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm_local.sh: installing slurm-wlm and munge" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

if [[ -n ${SLURM_LOCAL_STATE:-} ]]; then
    STATE=$(realpath -m "$SLURM_LOCAL_STATE")
    mkdir -p "$STATE"
    SLURM_LOCAL_KEEP=1
else
    STATE=$(mktemp -d /tmp/slurm-local.XXXXXX)
fi
chmod 755 "$STATE"
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
export SLURM_CONF="$STATE/slurm.conf"
mkdir -p "$STATE/ctld" "$STATE/spool"

cat >"$SLURM_CONF" <<EOF
ClusterName=local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=${SLURM_LOCAL_CTLD_PORT:-6817}
SlurmdPort=${SLURM_LOCAL_D_PORT:-6818}
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

# The slurm-jobstep plugin strips SLURM_* variables (SLURM_CONF too) before its nested `srun`, so
# inside a job only the default path is seen: install the config there for the cluster's lifetime.
DEFAULT_CONF=/etc/slurm/slurm.conf
mkdir -p "$(dirname "$DEFAULT_CONF")"
if [[ -e $DEFAULT_CONF || -L $DEFAULT_CONF ]]; then
    mv "$DEFAULT_CONF" "$STATE/slurm.conf.orig"
fi
cp "$SLURM_CONF" "$DEFAULT_CONF"

# True while process $1 exists and is not a zombie (a daemon's parent may be slow to reap it).
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# Stop the daemons whose pids are given: SIGTERM, then SIGKILL after 10 s, so none outlives the script.
stop() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 100); do
        local left=""
        for pid in "$@"; do
            if alive "$pid"; then left=1; fi
        done
        [[ -z $left ]] && return 0
        sleep 0.1
    done
    for pid in "$@"; do
        if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    done
}

STARTED_MUNGE=""
CHILD=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Interrupted (Ctrl-C, SIGTERM, a timeout): the command stops first, then its jobs and daemons.
    if [[ -n $CHILD ]] && alive "$CHILD"; then
        echo "slurm_local.sh: stopping the command (pid $CHILD)" >&2
        stop "$CHILD"
    fi
    # Jobs still queued or running (the command failed or was interrupted) end before their daemons.
    if [[ -s $STATE/slurmctld.pid ]]; then
        scancel --quiet --partition debug 2>/dev/null || true
        for _ in $(seq 20); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.5; done
    fi
    local pids=()
    for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
        [[ -s $pidfile ]] && pids+=("$(cat "$pidfile")")
    done
    if [[ -n $STARTED_MUNGE && -s /run/munge/munged.pid ]]; then
        pids+=("$(cat /run/munge/munged.pid)")
    fi
    stop "${pids[@]}"
    rm -f "$DEFAULT_CONF"
    if [[ -e $STATE/slurm.conf.orig ]]; then
        mv "$STATE/slurm.conf.orig" "$DEFAULT_CONF"
    fi
    if [[ -z ${SLURM_LOCAL_KEEP:-} ]]; then
        rm -rf "$STATE"
    else
        echo "slurm_local.sh: state and logs kept in $STATE" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT INT TERM

# munge: reuse a running daemon, else start one (the key exists after the package's install).
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    munged --force
    STARTED_MUNGE=1
    for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
up=""
for _ in $(seq 60); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then up=1 && break; fi
    sleep 0.5
done
if [[ -z $up ]]; then
    echo "slurm_local.sh: the node did not come up in 30 s; slurmctld.log and slurmd.log end with:" >&2
    tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
    exit 1
fi
echo "slurm_local.sh: cluster up ($HOST, $CPUS CPUs, ${MEM_MB} MB; SLURM_CONF=$SLURM_CONF)" >&2
sinfo >&2

if [[ $# -eq 0 ]]; then
    job=$(sbatch --parsable -o "$STATE/smoke.out" --wrap 'echo "hello from $(hostname) job $SLURM_JOB_ID"')
    for _ in $(seq 60); do [[ -z $(squeue -h -j "$job" 2>/dev/null) ]] && break; sleep 0.5; done
    cat "$STATE/smoke.out"
else
    # In the background: bash runs a trap only between foreground commands, so a signal would wait
    # for the command's end; this way it reaches cleanup at once, which stops the command first.
    # (<&0 keeps the terminal as its stdin, which a background command would otherwise lose.)
    "$@" <&0 &
    CHILD=$!
    wait "$CHILD"
fi
