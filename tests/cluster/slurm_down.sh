#!/usr/bin/env bash
# Stop the cluster slurm_up.sh started in DIR: cancel its jobs, then stop exactly the processes in DIR/pids
# (SIGTERM, SIGKILL after 10 s), and remove DIR. Safe to run twice; never touches other processes.
#   tests/cluster/slurm_down.sh "$LATENTGEN_SLURM_DIR"
set -uo pipefail
DIR=${1:?usage: slurm_down.sh DIR}
[ -d "$DIR" ] || exit 0
if [ -f "$DIR/slurm.conf" ] && [ -s "$DIR/pids" ]; then
    SLURM_CONF="$DIR/slurm.conf" timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
fi
# A pid is only signalled while it is still the daemon that was started (its command line names it).
alive() { [ -r "/proc/$2/cmdline" ] && tr '\0' ' ' < "/proc/$2/cmdline" | grep -q "$1"; }
if [ -f "$DIR/pids" ]; then
    tac "$DIR/pids" | while read -r name pid; do
        alive "$name" "$pid" && kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do alive "$name" "$pid" || break; sleep 0.1; done
        alive "$name" "$pid" && { echo "slurm_down: $name ($pid) ignored SIGTERM; SIGKILL" >&2; kill -KILL "$pid"; }
    done
fi
case "$DIR" in /tmp/latentgen-slurm.*) rm -rf "$DIR" ;; *) rm -f "$DIR/pids" ;; esac
exit 0
