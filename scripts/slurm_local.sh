#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for CI and for trying `--launcher slurm`
# (Debian/Ubuntu, as root). Usage:
#   scripts/slurm_local.sh install   # apt-get install slurm-wlm munge (once)
#   scripts/slurm_local.sh start     # write slurm.conf, start munged, slurmctld, slurmd; wait for the node
#   scripts/slurm_local.sh stop      # stop the daemons
# The configuration is the smallest that runs jobs: one node with this machine's CPUs and memory,
# one partition `debug`, proctrack/linuxproc and task/none (no cgroups needed, so it also runs in a
# container), select/cons_tres, no accounting database (cmat reads job states from squeue),
# finished jobs logged by jobcomp/filetxt. State and logs live under $SLURM_LOCAL_DIR
# (default /tmp/cmat-slurm).
set -euo pipefail
dir=${SLURM_LOCAL_DIR:-/tmp/cmat-slurm}
conf=/etc/slurm/slurm.conf

install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

start() {
    command -v slurmctld >/dev/null || { echo "slurm_local: slurmctld not found; run '$0 install' first" >&2; exit 1; }
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    mkdir -p "$dir/state" "$dir/spool" /etc/slurm /run/munge /var/log/munge /var/lib/munge
    cat > "$conf" <<EOF
ClusterName=cmat-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged --force 2>/dev/null || /usr/sbin/munged --force
    pgrep -x slurmctld >/dev/null || slurmctld -c
    pgrep -x slurmd >/dev/null || slurmd -c
    for _ in $(seq 1 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "slurm_local: node $host up ($cpus CPUs, ${mem} MB), partition debug; logs in $dir"
            return 0
        fi
        sleep 0.5
    done
    echo "slurm_local: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    sinfo >&2 || true
    exit 1
}

stop() {
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    pkill -x munged 2>/dev/null || true
    for _ in $(seq 1 20); do
        { pgrep -x slurmd || pgrep -x slurmctld; } >/dev/null || break
        sleep 0.25
    done
    echo "slurm_local: stopped"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
