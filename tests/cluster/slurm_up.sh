#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine, for the `slurm` tests and CI.
#
#   eval "$(tests/cluster/slurm_up.sh [DIR])"     # exports SLURM_CONF and LATENTGEN_SLURM_DIR
#   ...                                           # sinfo, sbatch, srun, pytest -m slurm
#   tests/cluster/slurm_down.sh "$LATENTGEN_SLURM_DIR"
#
# Everything lives in DIR (default: a new temporary directory): slurm.conf, its own munge key and socket,
# state, spool, logs, and `pids`, the processes started here (the only ones slurm_down.sh stops). Nothing
# is written to /etc; daemons that are already running on the machine are neither used nor touched (own
# munge socket, own ports: LATENTGEN_SLURM_PORT, default 16817, and the next one).
# Installs slurm-wlm and munge with apt-get when they are missing (needs root, as in CI). No systemd
# needed. Waits at most LATENTGEN_SLURM_TIMEOUT seconds (default 60) for the node to be idle; on any
# failure it stops what it started, prints why on stderr and exits non-zero. Stdout carries only the
# export lines.
set -euo pipefail

DIR=${1:-$(mktemp -d /tmp/latentgen-slurm.XXXXXX)}
TIMEOUT=${LATENTGEN_SLURM_TIMEOUT:-60}
PORT=${LATENTGEN_SLURM_PORT:-16817}
HERE=$(cd "$(dirname "$0")" && pwd)
say() { echo "slurm_up: $*" >&2; }
fail() {
    say "$*"
    for f in "$DIR"/log/*.log; do [ -f "$f" ] && { say "--- $f"; tail -n 15 "$f" >&2; }; done
    "$HERE/slurm_down.sh" "$DIR" >&2 || true
    exit 1
}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || { say "slurm-wlm/munge are not installed and this is not root"; exit 1; }
    command -v apt-get >/dev/null || { say "slurm-wlm/munge are not installed and there is no apt-get"; exit 1; }
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >&2 || { say "apt-get update failed"; exit 1; }
    timeout 600 apt-get install -y -qq slurm-wlm munge >&2 || { say "apt-get install failed"; exit 1; }
fi
[ "$(id -u)" = 0 ] || { say "slurmd must run as root here (SlurmdUser=root)"; exit 1; }

mkdir -p "$DIR"/{state,spool,log,munge}
chmod 700 "$DIR" "$DIR/munge"
: > "$DIR/pids"
HOST=$(hostname -s)
CPUS=$(getconf _NPROCESSORS_ONLN)  # not nproc: it follows OMP_NUM_THREADS
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))

# munge: a private key and socket, so this cluster never depends on (or disturbs) a system munged.
head -c 1024 /dev/urandom > "$DIR/munge/munge.key"
chmod 400 "$DIR/munge/munge.key"
munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || fail "munged did not start"
for _ in $(seq 50); do [ -s "$DIR/munge/munged.pid" ] && break; sleep 0.1; done
[ -s "$DIR/munge/munged.pid" ] || fail "munged wrote no pid file"
echo "munged $(cat "$DIR/munge/munged.pid")" >> "$DIR/pids"

cat > "$DIR/slurm.conf" <<CONF
ClusterName=latentgen
SlurmctldHost=$HOST
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job may start again cred_expire + 1 s after it was requeued (default 120 s).
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=15
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
JobRequeue=1
# Schedule every 2 s (the default main loop runs every 60 s), so that a requeued job starts promptly.
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=600
KillWait=10
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF=$DIR/slurm.conf

slurmctld -c -f "$SLURM_CONF" || fail "slurmctld did not start"
for _ in $(seq 50); do [ -s "$DIR/slurmctld.pid" ] && break; sleep 0.1; done
[ -s "$DIR/slurmctld.pid" ] || fail "slurmctld wrote no pid file"
echo "slurmctld $(cat "$DIR/slurmctld.pid")" >> "$DIR/pids"
slurmd -f "$SLURM_CONF" || fail "slurmd did not start"
for _ in $(seq 50); do [ -s "$DIR/slurmd.pid" ] && break; sleep 0.1; done
[ -s "$DIR/slurmd.pid" ] || fail "slurmd wrote no pid file"
echo "slurmd $(cat "$DIR/slurmd.pid")" >> "$DIR/pids"

deadline=$((SECONDS + TIMEOUT))
until [ "$(timeout 5 sinfo -h -N -o %t 2>/dev/null | head -n1)" = idle ]; do
    [ $SECONDS -lt $deadline ] || fail "the node is not idle after ${TIMEOUT}s: $(timeout 5 sinfo -N 2>&1 | tail -n1)"
    sleep 0.5
done
say "node $HOST idle ($CPUS CPUs) in $SECONDS s; state in $DIR"
echo "export SLURM_CONF=$SLURM_CONF"
echo "export LATENTGEN_SLURM_DIR=$DIR"
