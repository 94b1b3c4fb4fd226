#!/usr/bin/env bash
# A one-node Slurm cluster on localhost for the cluster test (Debian's slurm-wlm + munge, run as root).
# Idempotent: installs only what is missing and starts only the daemons that are not running.
# Appends to $SLURM_STARTED (default /dev/null) one line per daemon it started ("pidfile PATH") and
# per config file it created ("created PATH"), so that tests/cluster/stop_slurm.sh undoes just that.
# (A slurm.conf left behind without a controller makes every later scontrol call, and so every
# snakemake start with the Slurm plugin installed, wait 9 s for the missing controller.)
set -euo pipefail
STARTED=${SLURM_STARTED:-/dev/null}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 512 ))   # MB, leave headroom
LOG=/var/log/slurm
export DEBIAN_FRONTEND=noninteractive

missing=""
for p in slurm-wlm munge; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends $missing
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }   # alive PIDFILE

[ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  echo "pidfile /run/munge/munged.pid" >> "$STARTED"
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd $LOG /run/slurm
# No accounting database: sacct does not work, so Snakemake polls with squeue, which needs finished
# jobs kept visible for at least 120 s (MinJobAge).
CONF=$(cat <<CONF
ClusterName=localcluster
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
# One pretend GPU (/dev/null as its device), so the GPU requests of profiles/slurm get scheduled.
GresTypes=gpu
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
)
for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do [ -e "$f" ] || echo "created $f" >> "$STARTED"; done
GRES="Name=gpu File=/dev/null"
[ "$(cat /etc/slurm/gres.conf 2>/dev/null)" = "$GRES" ] || echo "$GRES" > /etc/slurm/gres.conf
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$CONF" ]; then
  echo "$CONF" > /etc/slurm/slurm.conf
  ! alive /run/slurm/slurmctld.pid || scontrol reconfigure
fi

if ! alive /run/slurm/slurmctld.pid; then /usr/sbin/slurmctld; echo "pidfile /run/slurm/slurmctld.pid" >> "$STARTED"; fi
if ! alive /run/slurm/slurmd.pid; then /usr/sbin/slurmd; echo "pidfile /run/slurm/slurmd.pid" >> "$STARTED"; fi
for _ in $(seq 60); do
  sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
  scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
  sleep 0.5
done
sinfo
