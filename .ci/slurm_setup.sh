#!/usr/bin/env bash
# A real one-node SLURM on this machine for tests/test_slurm.py: Debian's slurm-wlm and munge,
# a slurm.conf for this host (its CPUs and memory as slurmd measures them), munged, slurmctld
# and slurmd started without systemd, then waits until sinfo shows the node idle.
# Needs root and apt (CI's clean machine); run again, it restarts the daemons with a fresh config.
set -euo pipefail

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurm-wlm munge >/dev/null
fi

# Daemons of an earlier call (this script's pid files only).
for pid_file in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
  if [[ -s $pid_file ]] && kill "$(cat "$pid_file")" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$(cat "$pid_file")" 2>/dev/null || break; sleep 0.1; done
  fi
done

install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null   # a credential round trip, or stop here

# This host as slurmd measures it ("NodeName=<host> CPUs=2 ... RealMemory=..."): the CPUs and
# memory jobs may ask for. No systemd or cgroup v1/v2 delegation in a container: processes are
# tracked by their parent (linuxproc), tasks are not bound, memory is not enforced.
node=$(slurmd -C | head -1)
host=$(hostname -s)
install -d -o slurm -g slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=cxrci
SlurmctldHost=$host
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# scancel's SIGTERM -> SIGKILL after 5 s; finished jobs stay in squeue -t all for 10 min.
KillWait=5
MinJobAge=600
SchedulerParameters=defer
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
printf 'ConstrainCores=no\nConstrainRAMSpace=no\n' > /etc/slurm/cgroup.conf

/usr/sbin/slurmctld
/usr/sbin/slurmd
for _ in $(seq 60); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
  [[ $state == idle ]] && { sinfo -N -o '%N %c %m %T'; exit 0; }
  sleep 1
done
echo "slurm_setup: node not idle after 60 s (state: ${state:-none}); logs:" >&2
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2
exit 1
