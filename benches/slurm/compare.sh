#!/usr/bin/env bash
# drover's Slurm executor against Snakemake's (snakemake-executor-plugin-slurm), side by side on
# one real Slurm started for the purpose (tests/support/slurm-cluster.sh), on the same work:
# a chain of N stages, and N independent stages plus a gather. For each tool and shape it
# measures the wall time, every call of a Slurm command (through logging wrappers on PATH),
# the time from a job's end to its dependent's start (from timestamps the jobs write), and a
# rerun with nothing to do. Prints a table; writes benches/results/slurm_compare.json.
#
# Env: N (default 100), SHAPES (default "chain matrix"), TOOLS (default "drover snakemake"),
# DROVER (a drover binary; default $CARGO_TARGET_DIR or target/release/drover, built first),
# DROVER_POLL (drover's `slurm: { poll }`, default its own 10s), SMK_INIT (Snakemake's
# --slurm-init-seconds-before-status-checks, default 5; see README.md: the plugin checks that
# long after a submission, then backs off by 10 s per check that finds nothing finished, so
# its own default of 40 s would add 40 s to every step of a chain), SMK_EVERY (Snakemake's
# --seconds-between-status-checks, default 1; the plugin overrides it after its first check),
# SMK_ARRAYS=1 (the matrix as a Snakemake job array, --slurm-array-jobs=part; off by default:
# with plugin 2.8.0 a 100-task array failed, see README.md), SMK_VENV (where Snakemake is installed,
# default /tmp/drover-bench-snakemake), KEEP=1 keeps the work directory. Needs root (slurmd).
# Nothing is written into the repository but benches/results/slurm_compare.json: the cluster,
# the pipelines and every job's output live in a directory under /tmp.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
n=${N:-100}
shapes=${SHAPES:-chain matrix}
tools=${TOOLS:-drover snakemake}
smk_init=${SMK_INIT:-5}
smk_every=${SMK_EVERY:-1}
smk_arrays=${SMK_ARRAYS:-0}
venv=${SMK_VENV:-/tmp/drover-bench-snakemake}
results=$root/benches/results
mkdir -p "$results"

if [ ! -x "$venv/bin/snakemake" ] || ! "$venv/bin/python" -c 'import snakemake_executor_plugin_slurm' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "snakemake==9.27.*" "snakemake-executor-plugin-slurm==2.8.*"
fi
smk_version=$("$venv/bin/snakemake" --version)
plugin_version=$("$venv/bin/pip" show snakemake-executor-plugin-slurm 2>/dev/null | sed -n 's/^Version: //p')

if [ -z "${DROVER:-}" ]; then
  (cd "$root" && cargo build --release -j 2 --bin drover -q)
  DROVER=${CARGO_TARGET_DIR:-$root/target}/release/drover
fi

work=$(mktemp -d /tmp/drover-slurm-bench.XXXXXX)
chmod 755 "$work" # munged runs as its own user and must reach the cluster's directory
cluster=$work/cluster
cleanup() {
  "$root/tests/support/slurm-cluster.sh" stop "$cluster" >/dev/null 2>&1 || true
  [ "${KEEP:-}" = 1 ] && echo "work directory: $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT
"$root/tests/support/slurm-cluster.sh" install
"$root/tests/support/slurm-cluster.sh" start "$cluster" >/dev/null
export SLURM_CONF=$cluster/slurm.conf

# Wrappers that log each call of a Slurm command, then run it. `srun` also gets the cluster's
# config back: Snakemake's job step removes every SLURM_* variable before it calls srun.
shims=$work/shims
mkdir -p "$shims"
for cmd in sbatch squeue scancel scontrol sacct sacctmgr sinfo srun; do
  real=$(command -v "$cmd" || true)
  [ -n "$real" ] || continue
  cat >"$shims/$cmd" <<EOF
#!/bin/sh
echo "$cmd \$(date +%s.%N)" >> "\$BENCH_CALLS"
export SLURM_CONF="\${SLURM_CONF:-\$BENCH_SLURM_CONF}"
exec "$real" "\$@"
EOF
  chmod +x "$shims/$cmd"
done
export PATH=$shims:$PATH BENCH_SLURM_CONF=$SLURM_CONF

# Runs one tool once in DIR; prints `wall_seconds exit_code`.
run_tool() {
  local tool=$1 dir=$2 calls=$3 t0 t1 code=0
  export BENCH_CALLS=$calls
  : >"$calls"
  t0=$(date +%s.%N)
  case $tool in
  drover)
    (cd "$dir" && "$DROVER" run --executor slurm >"$dir/out.log" 2>&1) || code=$?
    ;;
  snakemake)
    (cd "$dir" && "$venv/bin/snakemake" --executor slurm -j 100 --slurm-status-command squeue \
      --slurm-init-seconds-before-status-checks "$smk_init" --seconds-between-status-checks "$smk_every" \
      --slurm-no-account \
      --default-resources mem_mb=100 $([ "$shape" = matrix ] && [ "$smk_arrays" = 1 ] && echo --slurm-array-jobs=part) \
      >"$dir/out.log" 2>&1) || code=$?
    ;;
  esac
  t1=$(date +%s.%N)
  echo "$(python3 -c "print($t1 - $t0)") $code"
}

python_stats=$(
  cat <<'EOF'
import json, sys, statistics
shape, times, calls, again = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ev = {}
for line in open(times):
    label, what, t = line.split()
    ev.setdefault(label, {})[what] = float(t)
gaps = []
if shape == "chain":
    # Snakemake's labels are zero-padded wildcards (`007`), drover's plain numbers.
    ev = {int(k): v for k, v in ev.items()}
    for i in range(1, len(ev)):
        gaps.append(ev[i]["start"] - ev[i - 1]["end"])
else:
    parts = [v["end"] for k, v in ev.items() if k != "gather"]
    gaps.append(ev["gather"]["start"] - max(parts))
def count(path):
    c = {}
    for line in open(path):
        name = line.split()[0]
        c[name] = c.get(name, 0) + 1
    return c
print(json.dumps({
    "jobs_ran": len(ev),
    "gap_median_s": round(statistics.median(gaps), 2),
    "gap_mean_s": round(statistics.mean(gaps), 2),
    "gap_max_s": round(max(gaps), 2),
    "calls": count(calls),
    "rerun_calls": count(again),
}))
EOF
)

rows=()
json="["
for shape in $shapes; do
  for tool in $tools; do
    dir=$work/$tool-$shape
    mkdir -p "$dir"
    python3 "$root/benches/slurm/gen.py" "$tool" "$shape" "$n" "$dir"
    if [ "$tool" = drover ] && [ -n "${DROVER_POLL:-}" ]; then
      sed -i "1a slurm: { poll: $DROVER_POLL }" "$dir/drover.yaml"
    fi
    read -r wall code < <(run_tool "$tool" "$dir" "$dir/calls.log")
    [ "$code" = 0 ] || { echo "$tool $shape failed (exit $code); see $dir/out.log" >&2; tail -20 "$dir/out.log" >&2; exit 1; }
    read -r again_wall again_code < <(run_tool "$tool" "$dir" "$dir/calls-again.log")
    stats=$(python3 -c "$python_stats" "$shape" "$dir/times.log" "$dir/calls.log" "$dir/calls-again.log")
    entry=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); d.update(tool=sys.argv[2], shape=sys.argv[3], n=int(sys.argv[4]), wall_s=round(float(sys.argv[5]),1), rerun_wall_s=round(float(sys.argv[6]),1)); print(json.dumps(d))" \
      "$stats" "$tool" "$shape" "$n" "$wall" "$again_wall")
    json="$json$entry,"
    rows+=("$entry")
    echo "$entry" >&2
  done
done
json="${json%,}]"
meta=$(python3 -c "import json,sys; print(json.dumps({'snakemake': sys.argv[1], 'plugin': sys.argv[2], 'drover_poll': sys.argv[3] or '10s (default)', 'snakemake_init_seconds': int(sys.argv[4]), 'snakemake_status_every_seconds': int(sys.argv[5]), 'snakemake_arrays': sys.argv[6] == '1', 'results': json.loads(sys.argv[7])}))" \
  "$smk_version" "$plugin_version" "${DROVER_POLL:-}" "$smk_init" "$smk_every" "$smk_arrays" "$json")
echo "$meta" >"$results/slurm_compare.json"
python3 - "$results/slurm_compare.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"Snakemake {d['snakemake']} + plugin {d['plugin']} (squeue status, first check after {d['snakemake_init_seconds']} s, then every {d['snakemake_status_every_seconds']} s) | drover poll {d['drover_poll']}, status files every 0.2 s")
print(f"{'shape':<8} {'tool':<10} {'wall s':>7} {'sbatch':>6} {'squeue':>6} {'other':>6} {'end->start med/max s':>21} {'rerun s':>8} {'rerun sbatch':>12}")
for r in d["results"]:
    c = r["calls"]
    other = sum(v for k, v in c.items() if k not in ("sbatch", "squeue"))
    others = ",".join(f"{k}={v}" for k, v in sorted(c.items()) if k not in ("sbatch", "squeue"))
    print(f"{r['shape']:<8} {r['tool']:<10} {r['wall_s']:>7} {c.get('sbatch',0):>6} {c.get('squeue',0):>6} {other:>6} {str(r['gap_median_s'])+' / '+str(r['gap_max_s']):>21} {r['rerun_wall_s']:>8} {r['rerun_calls'].get('sbatch',0):>12}  {others}")
EOF
