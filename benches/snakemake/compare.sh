#!/usr/bin/env bash
# Runs the shapes of benches/pipelines.rs under drover and under Snakemake, both timed by GNU
# time, prints them side by side with ratios and writes benches/results/snakemake_compare.json.
#
# Env: SIZES (default 100,1000), SHAPES (default chain,wide,layered), JOBS (default 2, drover's
# default -j on 2 cores; Snakemake gets it as -c), SNAKEMAKE_VERSION (default 9.27: the release
# the issue quotes), DROVER (a drover binary; default target/release/drover, built first),
# KEEP=1 keeps the work directory.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
sizes=${SIZES:-100,1000}
shapes=${SHAPES:-chain,wide,layered}
jobs=${JOBS:-2}
want=${SNAKEMAKE_VERSION:-9.27}
venv=$root/benches/.venv-snakemake
results=$root/benches/results

# Both tools are measured the same way: GNU time's user+sys come from wait4, so they include the
# shells each tool ran, and its %M is the largest RSS of the tool or any one child.
if ! /usr/bin/time -f %e true >/dev/null 2>&1; then
    echo "installing GNU time (Debian package 'time')" >&2
    sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq time
fi

# Snakemake in its own venv: WANT.x if the index serves it, else the newest 9.x, and say so.
if [ ! -x "$venv/bin/snakemake" ]; then
    python3 -m venv "$venv"
    available=$("$venv/bin/pip" index versions snakemake 2>/dev/null |
        sed -n 's/^Available versions: //p' | tr -d ' ' | tr ',' '\n')
    if grep -q "^${want//./\\.}\." <<<"$available"; then
        spec="snakemake==$want.*"
    else
        nearest=$(grep -m1 '^9\.' <<<"$available" || true)
        [ -n "$nearest" ] || { echo "the package index serves no Snakemake 9.x" >&2; exit 1; }
        echo "Snakemake $want.x is not served; using $nearest" >&2
        spec="snakemake==$nearest"
    fi
    "$venv/bin/pip" install -q "$spec"
fi
snakemake=$venv/bin/snakemake
smk_version=$("$snakemake" --version)

if [ -z "${DROVER:-}" ]; then
    (cd "$root" && cargo build --release --bin drover -q)
    DROVER=$root/target/release/drover
fi

work=$(mktemp -d -t drover-vs-snakemake.XXXXXX)
if [ "${KEEP:-}" = 1 ]; then
    echo "work directory: $work" >&2
else
    trap 'rm -rf "$work"' EXIT
fi

# The generator: the drover YAML must be the text benches/pipelines.rs generates.
cat >"$work/gen.py" <<'EOF'
"""Writes one bench pipeline: gen.py drover|snakemake SHAPE N DIR [OVERRIDE], or prints
`gen.py info SHAPE N` as "MID_PARAM EXPECTED_INCREMENTAL_RERUNS"."""
import os
import sys

LAYER = 10


def upstream(shape, n, i):
    """(port, stage index) pairs that stage i reads."""
    if shape == "chain" and i > 1:
        return [("prev", i - 1)]
    if shape == "wide" and i == n and n > 1:
        return [(f"i{j:0{width(n)}}", j) for j in range(1, n)]
    if shape == "layered" and i > LAYER:
        first = (i - 1) // LAYER * LAYER - LAYER + 1
        return [(f"p{k}", first + k) for k in range(LAYER)]
    return []


def width(n):
    return max(4, len(str(n)))


def fold(shape):
    """Layered stages checksum their ten inputs; concatenating them grows tenfold per layer."""
    return " | cksum" if shape == "layered" else ""


def mid(n):
    return n // 2 + 1


def reruns(shape, n):
    if shape == "chain":
        return n - mid(n) + 1
    if shape == "wide":
        return 2
    return 1 + LAYER * (n // LAYER - 1 - (mid(n) - 1) // LAYER)


def drover(shape, n):
    w = width(n)
    params = ", ".join(f"p{i:0{w}}: {i}" for i in range(1, n + 1))
    y = [f"pipeline: bench\nparams: {{ {params} }}\nstages:\n"]
    for i in range(1, n + 1):
        ins = upstream(shape, n, i)
        y.append(f"  s{i:0{w}}:\n    op: command\n")
        if ins:
            y.append("    in: { " + ", ".join(f"{p}: s{s:0{w}}" for p, s in ins) + " }\n")
        if i > 1:
            y.append("    deps: [scripts/step.sh]\n")
        if ins:
            cats = " ".join(f"${{in.{p}}}" for p, _ in ins)
            run = f"cat {cats}{fold(shape)} > ${{out.out}} && echo ${{params.p{i:0{w}}}} >> ${{out.out}}"
        else:
            run = f"echo ${{params.p{i:0{w}}}} > ${{out.out}}"
        y.append(f'    with: {{ run: "{run}" }}\n    out: {{ out: blob }}\n')
    return "".join(y)


def snakefile(shape, n, override):
    """One rule per stage, each with its param and the step.sh dep; `all` asks for the sinks."""
    w = width(n)
    if shape == "layered":
        sinks = range(n - LAYER + 1, n + 1)
    else:
        sinks = [n]
    # Snakemake builds its DAG recursively: a 1,000-stage chain exceeds Python's default
    # recursion limit (RecursionError at about stage 480).
    y = [f"# {shape}, {n} stages (benches/snakemake/compare.sh)\nimport sys\n\n"
         f"sys.setrecursionlimit({10 * n + 1000})\n\nrule all:\n"]
    y.append("    input: " + ", ".join(f'"out/s{s:0{w}}"' for s in sinks) + "\n")
    for i in range(1, n + 1):
        ins = upstream(shape, n, i)
        inputs = [f'{p}="out/s{s:0{w}}"' for p, s in ins] + (['dep="scripts/step.sh"'] if i > 1 else [])
        p = 0 if i == override else i
        y.append(f"\nrule s{i:0{w}}:\n")
        if inputs:
            y.append("    input: " + ", ".join(inputs) + "\n")
        y.append(f'    output: "out/s{i:0{w}}"\n    params: p={p}\n')
        if ins:
            cats = " ".join(f"{{input.{p}}}" for p, _ in ins)
            y.append(f'    shell: "cat {cats}{fold(shape)} > {{output}} && echo {{params.p}} >> {{output}}"\n')
        else:
            y.append('    shell: "echo {params.p} > {output}"\n')
    return "".join(y)


tool, shape, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if tool == "info":
    print(f"p{mid(n):0{width(n)}} {reruns(shape, n)}")
    sys.exit()
out = sys.argv[4]
os.makedirs(os.path.join(out, "scripts"), exist_ok=True)
with open(os.path.join(out, "scripts/step.sh"), "w") as f:
    f.write("#!/bin/sh\n# A dep of every stage but the first.\n")
if tool == "drover":
    text, name = drover(shape, n), "pipeline.yaml"
else:
    override = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    text, name = snakefile(shape, n, override), "Snakefile"
with open(os.path.join(out, name), "w") as f:
    f.write(text)
EOF

# One TSV line per measurement: tool shape n phase wall user sys rss_kib ran expected exit.
tsv=$work/results.tsv
: >"$tsv"

# Stages a tool reported as run (or, for plan and -n, to run), from its own summary.
count_ran() {
    local tool=$1 phase=$2
    if [ "$tool" = drover ] && [ "$phase" = plan ]; then
        sed -n 's/^\([0-9]*\) to run, .*/\1/p' "$work/out" | tail -n1
    elif [ "$tool" = drover ]; then
        sed -n 's/^[0-9]* stages\{0,1\}: \([0-9]*\) ran, .*/\1/p' "$work/err" | tail -n1
    elif grep -q '^Nothing to be done' "$work/err" "$work/out"; then
        echo 0
    else
        # The "Job stats" total counts the `all` target too.
        cat "$work/err" "$work/out" | awk '$1 == "total" { t = $2 } END { if (t != "") print t - 1 }'
    fi
}

# measure TOOL SHAPE N PHASE EXPECTED DIR COMMAND...
measure() {
    local tool=$1 shape=$2 n=$3 phase=$4 expected=$5 dir=$6 rc=0
    shift 6
    (cd "$dir" && /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >"$work/out" 2>"$work/err") || rc=$?
    local wall user sys rss ran
    # GNU time puts "Command exited with non-zero status N" before the numbers.
    read -r wall user sys rss < <(tail -n1 "$work/time")
    ran=$(count_ran "$tool" "$phase")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$tool" "$shape" "$n" "$phase" "$wall" "$user" "$sys" "$rss" "${ran:-?}" "$expected" "$rc" >>"$tsv"
    printf '%-9s %-7s %6s %-11s wall %7ss  cpu %7.2fs  rss %6s KiB  ran %s/%s%s\n' "$tool" "$shape" "$n" \
        "$phase" "$wall" "$(awk "BEGIN { print $user + $sys }")" "$rss" "${ran:-?}" "$expected" \
        "$([ "$rc" = 0 ] || echo "  EXIT $rc: $(tail -n1 "$work/err")")" >&2
}

echo "drover: $DROVER; snakemake $smk_version; -j/-c $jobs; sizes $sizes; shapes $shapes" >&2
python=$venv/bin/python
for n in ${sizes//,/ }; do
    for shape in ${shapes//,/ }; do
        read -r mid_param reruns < <("$python" "$work/gen.py" info "$shape" "$n")
        mid=$((n / 2 + 1))

        d=$work/drover-$shape-$n
        "$python" "$work/gen.py" drover "$shape" "$n" "$d"
        measure drover "$shape" "$n" cold "$n" "$d" "$DROVER" run pipeline.yaml -j "$jobs"
        measure drover "$shape" "$n" noop 0 "$d" "$DROVER" run pipeline.yaml -j "$jobs"
        measure drover "$shape" "$n" plan 0 "$d" "$DROVER" plan pipeline.yaml
        measure drover "$shape" "$n" incremental "$reruns" "$d" \
            "$DROVER" run pipeline.yaml -j "$jobs" --set "$mid_param=0"

        s=$work/snakemake-$shape-$n
        "$python" "$work/gen.py" snakemake "$shape" "$n" "$s"
        measure snakemake "$shape" "$n" cold "$n" "$s" "$snakemake" -c "$jobs"
        measure snakemake "$shape" "$n" noop 0 "$s" "$snakemake" -c "$jobs"
        measure snakemake "$shape" "$n" plan 0 "$s" "$snakemake" -n -c "$jobs"
        # The same change as drover's --set: stage MID's param becomes 0 (a params rerun trigger).
        "$python" "$work/gen.py" snakemake "$shape" "$n" "$s" "$mid"
        measure snakemake "$shape" "$n" incremental "$reruns" "$s" "$snakemake" -c "$jobs"
    done
done

mkdir -p "$results"
commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$([ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ] && echo true || echo false)
"$python" - "$tsv" "$results/snakemake_compare.json" "$smk_version" "$jobs" "$commit" "$dirty" "$DROVER" <<'EOF'
"""Prints drover and Snakemake side by side and writes the JSON."""
import datetime
import json
import platform
import sys

tsv, out, smk_version, jobs, commit, dirty, drover = sys.argv[1:]
rows = []
for line in open(tsv):
    tool, shape, n, phase, wall, user, sys_, rss, ran, expected, rc = line.rstrip("\n").split("\t")
    rows.append({
        "tool": tool, "shape": shape, "n": int(n), "phase": phase,
        "wall_s": float(wall), "cpu_s": round(float(user) + float(sys_), 3),
        "user_s": float(user), "sys_s": float(sys_), "peak_rss_mib": round(int(rss) / 1024, 1),
        "ran": int(ran) if ran.isdigit() else None, "expected_ran": int(expected), "exit_code": int(rc),
    })

by = {(r["tool"], r["shape"], r["n"], r["phase"]): r for r in rows}
label = {"cold": "cold run", "noop": "no-op rerun", "plan": "plan / -n", "incremental": "incremental"}
print(f"\n{'':26}{'drover':^28}{'snakemake ' + smk_version:^28}{'snakemake / drover':^20}")
print(f"{'shape':<8}{'N':>6}  {'phase':<12}" + f"{'wall s':>9}{'CPU s':>9}{'RSS MiB':>10}" * 2
      + f"{'wall':>9}{'CPU':>9}  check")
ratios = []
for (tool, shape, n, phase), d in by.items():
    if tool != "drover" or (s := by.get(("snakemake", shape, n, phase))) is None:
        continue
    ratio = lambda a, b: round(a / b, 1) if b > 0 else None
    wr, cr = ratio(s["wall_s"], d["wall_s"]), ratio(s["cpu_s"], d["cpu_s"])
    ratios.append({"shape": shape, "n": n, "phase": phase, "wall_ratio": wr, "cpu_ratio": cr})
    bad = [f"{r['tool']} ran {r['ran']}, expected {r['expected_ran']}" if r["exit_code"] == 0
           else f"{r['tool']} exited {r['exit_code']}"
           for r in (d, s) if r["exit_code"] != 0 or r["ran"] != r["expected_ran"]]
    # GNU time rounds to 0.01 s: a ratio against a drover time under 0.05 s is rough (~).
    fmt = lambda x, base: "-" if x is None else ("~" if base < 0.05 else "") + f"{x:.1f}x"
    print(f"{shape:<8}{n:>6}  {label[phase]:<12}"
          + "".join(f"{r['wall_s']:>9.2f}{r['cpu_s']:>9.2f}{r['peak_rss_mib']:>10.1f}" for r in (d, s))
          + f"{fmt(wr, d['wall_s']):>9}{fmt(cr, d['cpu_s']):>9}  {'; '.join(bad) or 'ok'}")

result = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "commit": commit, "worktree_dirty": dirty == "true", "drover": drover,
    "snakemake_version": smk_version, "python": platform.python_version(), "jobs": int(jobs),
    "measured_with": "GNU time: wall %e, CPU %U+%S (tool and the shells it waited for), RSS %M",
    "rows": rows, "ratios": ratios,
}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
print(f"\nwrote {out}")
EOF
