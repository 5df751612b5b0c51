#!/usr/bin/env bash
# Merge benchmark: drover's merge_models against mergekit (PyPI, CPU) on the same ~1 GiB
# Llama-shaped checkpoints and configs, side by side: wall time, GB/s of input, peak RSS, and a
# tensor-by-tensor comparison of the outputs. Also measures `cat` of the inputs to /dev/null and
# `dd` of an output-sized file, the machine's read and write bounds.
#
# Usage: benches/merge/run.sh [WORK_DIR]   (default: /tmp/drover-merge-bench)
# Env:   METHODS="linear ties dare_ties"   DEVICE=cpu|wgpu   SIZE="--hidden 1536 --inter 4096 --layers 16 --vocab 32000"
#
# Needs a release build (`cargo build --release`), Python 3.11 and about 12 GB of disk. The first
# run creates benches/.venv-mergekit (mergekit 0.1.5 with torch, ~3 GB of wheels).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${1:-/tmp/drover-merge-bench}"
methods="${METHODS:-linear ties dare_ties}"
device="${DEVICE:-cpu}"
size="${SIZE:---hidden 1536 --inter 4096 --layers 16 --vocab 32000}"
venv="$repo/benches/.venv-mergekit"
drover="$repo/target/release/drover"

[ -x "$drover" ] || { echo "build drover first: cargo build --release" >&2; exit 1; }
if [ ! -x "$venv/bin/mergekit-yaml" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q mergekit==0.1.5
fi
py="$venv/bin/python"
calc() { "$py" -c "print($1)"; }
mkdir -p "$work"
cd "$work"

if [ ! -f models/ft2/config.json ]; then
    echo "# writing checkpoints ($size, bfloat16)"
    "$py" "$here/make_models.py" models $size --finetunes 2 --dtype bfloat16
    rm -f models/*/tokenizer.json # mergekit would try to load the stand-in as a real tokenizer
fi
input_bytes=$(cat models/*/*.safetensors | wc -c)
echo "# inputs: $(du -shL models | cut -f1) in 3 models ($input_bytes bytes of weights)"

# Machine bounds: reading the inputs from the page cache, writing one output to disk.
cat models/*/*.safetensors > /dev/null
t0=$(date +%s.%N); cat models/*/*.safetensors > /dev/null; t1=$(date +%s.%N)
cat_s=$(calc "$t1 - $t0")
out_bytes=$(cat models/base/*.safetensors | wc -c)
t0=$(date +%s.%N); dd if=/dev/zero of=dd.out bs=1M count=$((out_bytes / 1048576)) conv=fsync status=none; t1=$(date +%s.%N)
dd_s=$(calc "$t1 - $t0"); rm -f dd.out
printf "cat inputs > /dev/null: %.2f s (%.2f GB/s); dd an output-sized file (fsync): %.2f s (%.2f GB/s)\n" \
    "$cat_s" "$(calc "$input_bytes / $cat_s / 1e9")" "$dd_s" "$(calc "$out_bytes / $dd_s / 1e9")"

config() { # method -> mergekit YAML on stdout
    local m="$1" M="$work/models"
    case "$m" in
        linear) printf 'merge_method: linear\nmodels:\n  - model: %s/base\n    parameters: {weight: 0.4}\n  - model: %s/ft1\n    parameters: {weight: 0.3}\n  - model: %s/ft2\n    parameters: {weight: 0.3}\ndtype: float32\nout_dtype: bfloat16\n' "$M" "$M" "$M" ;;
        *) printf 'merge_method: %s\nbase_model: %s/base\nmodels:\n  - model: %s/ft1\n    parameters: {weight: 0.5, density: 0.5}\n  - model: %s/ft2\n    parameters: {weight: 0.5, density: 0.5}\ndtype: float32\nout_dtype: bfloat16\n' "$m" "$M" "$M" "$M" ;;
    esac
}

{
    echo "stages:"
    for m in base ft1 ft2; do echo "  $m: { op: read_model, with: { path: models/$m } }"; done
    for m in $methods; do
        config "$m" > "$m.yml"
        echo "  $m:"
        echo "    op: merge_models"
        echo "    in: { base: base, ft1: ft1, ft2: ft2 }"
        echo "    with: { config: $m.yml, seed: 1, ports: { \"$work/models/base\": base, \"$work/models/ft1\": ft1, \"$work/models/ft2\": ft2 } }"
    done
} > drover.yaml
"$drover" run --device "$device" --target base --target ft1 --target ft2 > /dev/null 2>&1

printf "\n%-10s %-9s %9s %9s %11s\n" method tool "wall s" "GB/s in" "peak RSS"
for m in $methods; do
    /usr/bin/time -f "%e %M" -o time.drover "$drover" run --device "$device" --target "$m" --force "$m" > /dev/null 2> drover.err \
        || { cat drover.err; exit 1; }
    read -r wall rss < time.drover
    printf "%-10s %-9s %9.2f %9.2f %8.0f MB\n" "$m" drover "$wall" "$(calc "$input_bytes / $wall / 1e9")" "$(calc "$rss / 1024")"
    sed -n '1,2p' "$(ls -td .drover/logs/*/ | head -1)/$m.log" | sed 's/^/    drover log: /'
    rm -rf "out.$m.drover"; "$drover" export "$m.model" "out.$m.drover" > /dev/null
    rm -rf "out.$m.mergekit"
    /usr/bin/time -f "%e %M" -o time.mergekit "$venv/bin/mergekit-yaml" "$m.yml" "out.$m.mergekit" --random-seed 1 \
        --no-copy-tokenizer --quiet > mergekit.log 2>&1 || { tail -20 mergekit.log; exit 1; }
    read -r wall rss < time.mergekit
    printf "%-10s %-9s %9.2f %9.2f %8.0f MB\n" "$m" mergekit "$wall" "$(calc "$input_bytes / $wall / 1e9")" "$(calc "$rss / 1024")"
    # Reported, not enforced: dare_ties draws different random masks in the two tools, and
    # with bf16 inputs many task-vector magnitudes are equal, so ties/breadcrumbs keep different
    # elements where equal magnitudes straddle the top-k cut (drover keeps the earlier ones,
    # mergekit whatever its sort leaves). With f32 inputs the deterministic methods agree to f32
    # rounding (see README.md).
    printf "    outputs: "; "$py" "$here/compare.py" "out.$m.drover" "out.$m.mergekit" --tolerance 1e9
done
