#!/usr/bin/env bash
# ROUGE-L diversity filter: drover's rouge_dedup against Google's rouge_score (Python, the loop
# Self-Instruct and Alpaca run) on the same instructions; checks that both keep the same rows.
#
# Usage: benches/rouge/compare.sh [N] [WORK_DIR]   (default N = 10000; BASELINE=0 skips rouge_score,
# which is quadratic in Python: about 80 s at N = 2,000 on one core)
# Needs a release build (`cargo build --release`); creates benches/.venv-rouge (rouge_score 0.1.2).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
n="${1:-10000}"
work="${2:-/tmp/drover-rouge-bench}"
venv="$repo/benches/.venv-rouge"
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv"; "$venv/bin/pip" install -q rouge_score==0.1.2; }
rm -rf "$work" && mkdir -p "$work" && cd "$work"
python3 "$here/make_data.py" "$repo/../shared/data/self_instruct" . "$n"
cat > drover.yaml <<YAML
stages:
  seeds: { op: read_table, with: { path: seeds.jsonl } }
  candidates: { op: read_table, with: { path: candidates.jsonl } }
  diverse:
    op: rouge_dedup
    in: { table: candidates, against: seeds }
    with: { column: instruction, keep_rejected: true }
YAML
/usr/bin/time -f "drover run: %e s wall, %M KB peak RSS" "$repo/target/release/drover" run 2>&1 | tail -1
echo "drover stage log: $(cat .drover/logs/*/diverse.log)"
"$repo/target/release/drover" export diverse.out kept.csv > /dev/null 2>&1
python3 - <<'PY'
import csv
rows = list(csv.DictReader(open("kept.csv")))
open("drover_kept.txt", "w").write("\n".join(str(i) for i, r in enumerate(rows) if r["kept"] == "true") + "\n")
PY
[ "${BASELINE:-1}" = 1 ] || exit 0
"$venv/bin/python" "$here/baseline.py" .
if cmp -s drover_kept.txt baseline_kept.txt; then echo "same rows kept"; else echo "DIFFERENT rows kept"; exit 1; fi
