#!/usr/bin/env bash
# Parity check: merges tiny f32 Llama-shaped models with drover and with mergekit 0.1.5, through
# the same config files, and compares the outputs tensor by tensor. Deterministic methods only
# (dare and della draw random masks differently in the two tools). Fails when any output differs
# by more than 1e-5 of a tensor's largest value.
#
# Usage: benches/merge/parity.sh [WORK_DIR]   (default: /tmp/drover-merge-parity)
# Needs `cargo build` (debug is enough) and the venv that run.sh creates.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${1:-/tmp/drover-merge-parity}"
venv="$repo/benches/.venv-mergekit"
drover="$repo/target/debug/drover"
[ -x "$drover" ] || drover="$repo/target/release/drover"
if [ ! -x "$venv/bin/mergekit-yaml" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q mergekit==0.1.5
fi
rm -rf "$work" && mkdir -p "$work/cfg" && cd "$work"
"$venv/bin/python" "$here/make_models.py" models --hidden 64 --inter 96 --layers 4 --vocab 128 --finetunes 3 \
    --dtype float32 --noise 0.02
rm -f models/*/tokenizer.json
M="$work/models"
three="  - model: $M/ft1
    parameters: {weight: 0.5, density: 0.6}
  - model: $M/ft2
    parameters: {weight: 0.3, density: 0.4}
  - model: $M/ft3
    parameters: {weight: -0.2, density: 0.75}"
printf 'merge_method: linear\nmodels:\n  - model: %s/ft1\n    parameters: {weight: 1.0}\n  - model: %s/ft2\n    parameters: {weight: 0.5}\n  - model: %s/ft3\n    parameters: {weight: [0.1, 0.9]}\ndtype: float32\n' "$M" "$M" "$M" > cfg/linear.yml
for m in task_arithmetic ties breadcrumbs breadcrumbs_ties; do
    printf 'merge_method: %s\nbase_model: %s/base\nmodels:\n%s\nparameters: {lambda: 0.9}\ndtype: float32\n' "$m" "$M" "$three" > "cfg/$m.yml"
done
cat > cfg/ties_gradients.yml <<YAML
merge_method: ties
base_model: $M/base
models:
  - model: $M/ft1
    parameters: {density: [1, 0.7, 0.1], weight: 1.0}
  - model: $M/ft2
    parameters: {density: 0.5, weight: [0, 0.3, 0.7, 1]}
  - model: $M/ft3
    parameters:
      density: 0.33
      weight: [{filter: mlp, value: 0.5}, {value: 0}]
parameters: {normalize: true, int8_mask: true}
dtype: float32
YAML
cat > cfg/slerp.yml <<YAML
slices:
  - sources:
      - {model: $M/base, layer_range: [0, 4]}
      - {model: $M/ft1, layer_range: [0, 4]}
merge_method: slerp
base_model: $M/base
parameters:
  t:
    - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}
    - {filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}
    - value: 0.5
dtype: float32
YAML
printf 'merge_method: model_stock\nbase_model: %s/base\nmodels:\n  - model: %s/ft1\n  - model: %s/ft2\n  - model: %s/ft3\ndtype: float32\n' "$M" "$M" "$M" "$M" > cfg/model_stock.yml
printf 'slices:\n  - sources:\n    - {model: %s/ft1, layer_range: [0, 3]}\n  - sources:\n    - {model: %s/ft2, layer_range: [1, 4]}\nmerge_method: passthrough\ndtype: float32\n' "$M" "$M" > cfg/passthrough.yml

{
    echo "stages:"
    for m in base ft1 ft2 ft3; do echo "  $m: { op: read_model, with: { path: models/$m } }"; done
    for c in cfg/*.yml; do
        n=$(basename "$c" .yml); ins=""; ports=""
        for m in base ft1 ft2 ft3; do
            if grep -q "$M/$m\b" "$c"; then ins="$ins $m: $m,"; ports="$ports \"$M/$m\": $m,"; fi
        done
        echo "  $n: { op: merge_models, in: {${ins%,} }, with: { config: $c, ports: {${ports%,} } } }"
    done
} > drover.yaml
"$drover" run > drover.log 2>&1 || { cat drover.log; exit 1; }
status=0
for c in cfg/*.yml; do
    n=$(basename "$c" .yml)
    "$venv/bin/mergekit-yaml" "$c" "mergekit/$n" --no-copy-tokenizer --quiet > "mergekit-$n.log" 2>&1
    "$drover" export "$n.model" "drover/$n" > /dev/null 2>&1
    printf "%-18s " "$n"
    "$venv/bin/python" "$here/compare.py" "drover/$n" "mergekit/$n" --tolerance 1e-5 || status=1
done
exit $status
