#!/usr/bin/env bash
# Times Chinchilla Approach 3 (Epoch AI's replication) under the Python/scipy reference
# (reference.py) and under drover (pipelines/chinchilla_approach3.yaml), and prints the two
# side by side: the 4,500-start grid fit and the 4,000-resample bootstrap.
#
# Env: STARTS (default 4500: grid starts the scipy side runs; fewer are extrapolated to 4500),
# RESAMPLES (default 4000: scipy bootstrap resamples; other counts are extrapolated to 4000),
# REF_ARGS (extra reference.py flags, e.g. "--ftol 1e-15 --gtol 1e-10"; default none, i.e.
# scipy's default L-BFGS-B options), DROVER (default target/release/drover).
# Writes target/bench-scaling/: scipy.json, drover_grid.log, drover_bootstrap.log.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

starts=${STARTS:-4500}
resamples=${RESAMPLES:-4000}
ref_args=${REF_ARGS:-}
drover=${DROVER:-target/release/drover}
pipeline=pipelines/chinchilla_approach3.yaml
venv=benches/.venv-scipy
out=target/bench-scaling
mkdir -p "$out"

# --- scipy side -----------------------------------------------------------------------------
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import numpy, scipy' 2>/dev/null; then
    echo "creating $venv (numpy, scipy)" >&2
    python3 -m venv "$venv"
    # Keep the venv out of git without touching the repo's .gitignore.
    printf '*\n' >"$venv/.gitignore"
    "$venv/bin/pip" install -q numpy==2.4.6 scipy==1.17.1
fi
py=$venv/bin/python

echo "== scipy reference: $starts grid starts, $resamples bootstrap resamples ${ref_args:+($ref_args)}"
# shellcheck disable=SC2086  # REF_ARGS is a list of flags
"$py" benches/scaling_law/reference.py --starts "$starts" --resamples "$resamples" \
    $ref_args --json "$out/scipy.json"

# One field of scipy.json ("" when null).
field() {
    "$py" -c 'import json, sys
v = json.load(open(sys.argv[1]))[sys.argv[2]]
print("" if v is None else v)' "$out/scipy.json" "$1"
}
if [ "$starts" = 4500 ]; then
    scipy_grid=$(field grid_seconds) scipy_grid_how=measured
else
    scipy_grid=$(field extrapolated_full_grid_seconds)
    scipy_grid_how="extrapolated from $starts starts"
fi
if [ "$resamples" = 4000 ]; then
    scipy_boot=$(field bootstrap_seconds) scipy_boot_how=measured
elif [ "$resamples" -gt 0 ]; then
    scipy_boot=$(field extrapolated_4000_resamples_seconds)
    scipy_boot_how="extrapolated from $resamples resamples"
else
    scipy_boot="" scipy_boot_how="not run (RESAMPLES=0)"
fi

# --- drover side ----------------------------------------------------------------------------
if [ ! -x "$drover" ] || [ ! -f "$pipeline" ]; then
    [ -x "$drover" ] || echo "missing $drover" >&2
    [ -f "$pipeline" ] || echo "missing $pipeline" >&2
    echo "build drover first: cargo build --release (and have $pipeline in the tree); the scipy" \
        "numbers are in $out/scipy.json" >&2
    exit 1
fi

# Runs drover with the given --set, timed; prints "wall user sys maxrss_kib".
if /usr/bin/time -f %e true >/dev/null 2>&1; then
    timed() {
        local log=$1 tf
        shift
        tf=$(mktemp)
        /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" >"$log" 2>&1 ||
            { echo "failed: $* (see $log)" >&2; rm -f "$tf"; exit 1; }
        tail -n 1 "$tf"
        rm -f "$tf"
    }
else
    echo "/usr/bin/time not found; using bash's time (no max RSS)" >&2
    timed() {
        local log=$1 tf TIMEFORMAT='%R %U %S NA'
        shift
        tf=$(mktemp)
        { time "$@" >"$log" 2>&1; } 2>"$tf" ||
            { echo "failed: $* (see $log)" >&2; rm -f "$tf"; exit 1; }
        tail -n 1 "$tf"
        rm -f "$tf"
    }
fi

echo "== drover: grid only (resamples=0)"
t=$(timed "$out/drover_grid.log" "$drover" run "$pipeline" --force fit --set resamples=0)
read -r d_grid d_grid_user d_grid_sys d_grid_rss <<<"$t"
echo "   ${d_grid}s wall, ${d_grid_user}s user, ${d_grid_sys}s sys, max RSS ${d_grid_rss} KiB"

echo "== drover: grid + bootstrap (resamples=4000)"
t=$(timed "$out/drover_bootstrap.log" "$drover" run "$pipeline" --force fit --set resamples=4000)
read -r d_all d_all_user d_all_sys d_all_rss <<<"$t"
echo "   ${d_all}s wall, ${d_all_user}s user, ${d_all_sys}s sys, max RSS ${d_all_rss} KiB"
# The second run fits the grid again, so drover's bootstrap is the difference of the two.
d_boot=$(awk -v a="$d_all" -v g="$d_grid" 'BEGIN { printf "%.2f", a - g }')

# --- table ----------------------------------------------------------------------------------
ratio() {
    awk -v s="$1" -v d="$2" 'BEGIN {
        if (s == "" || d == "" || d <= 0) print "-"; else printf "%.1fx", s / d }'
}
secs() {
    if [ -z "$1" ]; then echo "-"; else awk -v s="$1" 'BEGIN { printf "%.2f", s }'; fi
}

echo
echo "Chinchilla Approach 3, 240 points (scipy $("$py" -c 'import scipy; print(scipy.__version__)'), numpy $("$py" -c 'import numpy; print(numpy.__version__)'), 1 thread)"
printf '%-26s %12s %12s %10s  %s\n' "" "scipy (s)" "drover (s)" "scipy/drover" "scipy figure"
printf '%-26s %12s %12s %10s  %s\n' "grid fit, 4500 starts" "$(secs "$scipy_grid")" \
    "$(secs "$d_grid")" "$(ratio "$scipy_grid" "$d_grid")" "$scipy_grid_how"
printf '%-26s %12s %12s %10s  %s\n' "bootstrap, 4000 resamples" "$(secs "$scipy_boot")" \
    "$(secs "$d_boot")" "$(ratio "$scipy_boot" "$d_boot")" "$scipy_boot_how"
echo
echo "drover's wall times include its start-up and the pipeline around the fit; its bootstrap"
echo "is (resamples=4000 run) - (resamples=0 run). Logs: $out/drover_*.log; scipy: $out/scipy.json"
