#!/usr/bin/env bash
# A real Slurm on this machine, for drover's tests and benchmarks: Debian's slurmctld, slurmd
# and munge, started by hand (no systemd), with every file under one directory.
#
#   tests/support/slurm-cluster.sh install        apt-get the packages (Debian 12: Slurm 22.05)
#   tests/support/slurm-cluster.sh start DIR      start; prints `export SLURM_CONF=DIR/slurm.conf`
#   tests/support/slurm-cluster.sh stop DIR       cancel every job, wait for them, stop daemons
#
# The cluster: nodes n1 and n2 in partition `main` (the default), each with 8 CPUs and 4000 MB
# declared (the host's own counts do not matter: `config_overrides`), n1 with two fake GPUs
# (character devices; a job that asks for one sees CUDA_VISIBLE_DEVICES); node n3 alone in
# partition `flaky`, for tests that take a node down without touching the others' jobs.
# Three slurmd run on this host on their own ports; munged listens on DIR's own socket, so
# nothing here touches /etc/slurm, /etc/munge or another cluster on the machine.
#
# Ports: DROVER_SLURM_PORT for slurmctld, the next three for n1..n3 (default: the first of
# 16817, 16917, ... where all four are free).
# Accounting is off, as on many clusters: `sacct` answers nothing; squeue keeps finished jobs
# for MinJobAge (300 s).
set -euo pipefail

cmd=${1:-}
dir=${2:-}

die() {
  echo "slurm-cluster: $*" >&2
  exit 3
}

# A process's state letter from /proc (killed daemons linger as zombies here: PID 1 reaps
# late, so `kill -0` is no test of life).
alive() {
  local pid=$1 state
  [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
  [ "$state" != Z ] && [ "$state" != X ]
}

stop_pidfile() {
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file" 2>/dev/null || true)
  rm -f "$file"
  [ -n "$pid" ] && alive "$pid" || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

case "$cmd" in
install)
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null
  fi
  ;;

start)
  [ -n "$dir" ] || die "usage: $0 start DIR"
  command -v slurmctld >/dev/null || die "slurmctld is not installed (run: $0 install)"
  [ "$(id -u)" -eq 0 ] || die "starting slurmd needs root"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # Four ports in a row that nothing listens on (another cluster on this machine, say), from
  # DROVER_SLURM_PORT if set.
  port=${DROVER_SLURM_PORT:-}
  if [ -z "$port" ]; then
    listening=$(ss -Hltn 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u || true)
    for base in $(seq 16817 100 26817); do
      free=1
      for p in $base $((base + 1)) $((base + 2)) $((base + 3)); do
        if echo "$listening" | grep -qx "$p"; then free=0; fi
      done
      if [ $free = 1 ]; then port=$base; break; fi
    done
    [ -n "$port" ] || die "no four free ports in a row between 16817 and 26820"
  fi
  host=$(hostname -s)
  "$0" stop "$dir" >/dev/null 2>&1 || true
  # A clean slate: slurmctld recovers jobs from its state directory otherwise.
  rm -rf "$dir/state" "$dir/spool" "$dir/log" "$dir/munge" "$dir/munge-run" "$dir/dev"
  mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge" "$dir/munge-run" "$dir/dev"
  chmod 755 "$dir"
  runuser -u munge -- test -x "$dir" ||
    die "the munge user cannot reach $dir: make the directories above it searchable (chmod o+x)"

  # munge: its own key (a private directory) and socket (one every client can enter), run as
  # the munge user (it refuses loose permissions).
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chown -R munge:munge "$dir/munge" "$dir/munge-run"
  chmod 700 "$dir/munge"
  chmod 755 "$dir/munge-run"
  chmod 400 "$dir/munge/munge.key"
  runuser -u munge -- munged --socket="$dir/munge-run/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge-run/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed" \
    || die "munged did not start (see $dir/munge/munged.log)"
  cp "$dir/munge-run/munged.pid" "$dir/munged.pid"

  for i in 0 1; do
    [ -e "$dir/dev/gpu$i" ] || mknod -m 666 "$dir/dev/gpu$i" c 1 3
  done
  cat >"$dir/gres.conf" <<EOF
AutoDetect=off
NodeName=n1 Name=gpu File=$dir/dev/gpu[0-1]
EOF
  cat >"$dir/slurm.conf" <<EOF
ClusterName=drovertest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=socket=$dir/munge-run/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=100
GresTypes=gpu
ReturnToService=2
SlurmdParameters=config_overrides
# Without it a job whose dependency failed stays PENDING forever (in SchedulerParameters it is
# ignored by 22.05).
DependencyParameters=kill_invalid_depend
SchedulerParameters=batch_sched_delay=0
KillWait=2
OverTimeLimit=0
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + 1)) CPUs=8 RealMemory=4000 Gres=gpu:2 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + 2)) CPUs=8 RealMemory=4000 State=UNKNOWN
NodeName=n3 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + 3)) CPUs=8 RealMemory=4000 State=UNKNOWN
PartitionName=main Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
PartitionName=flaky Nodes=n3 MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -c -f "$SLURM_CONF" || die "slurmctld did not start (see $dir/log/slurmctld.log)"
  for n in n1 n2 n3; do
    slurmd -f "$SLURM_CONF" -N "$n" || die "slurmd $n did not start (see $dir/log/slurmd-$n.log)"
  done
  for _ in $(seq 600); do
    states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | awk '{print $2}' | sort -u | tr '\n' ' ')
    if [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | grep -c ' idle')" -ge 3 ]; then
      echo "export SLURM_CONF=$SLURM_CONF"
      exit 0
    fi
    sleep 0.1
  done
  die "nodes did not come up within 60 s (states: ${states:-none}; see $dir/log)"
  ;;

stop)
  [ -n "$dir" ] || die "usage: $0 stop DIR"
  dir=$(cd "$dir" 2>/dev/null && pwd) || exit 0
  export SLURM_CONF="$dir/slurm.conf"
  # Jobs outlive the daemons (slurmstepd re-parents to PID 1): cancel them and wait first.
  if [ -f "$dir/slurmctld.pid" ] && alive "$(cat "$dir/slurmctld.pid")"; then
    scancel --quiet --full $(squeue -h -o %A 2>/dev/null | sort -u) 2>/dev/null || true
    for _ in $(seq 100); do
      [ -z "$(squeue -h -t PD,R,CG,S,CF -o %A 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  for n in n1 n2 n3; do stop_pidfile "$dir/slurmd-$n.pid"; done
  stop_pidfile "$dir/slurmctld.pid"
  stop_pidfile "$dir/munged.pid"
  ;;

*)
  die "usage: $0 install | start DIR | stop DIR"
  ;;
esac
