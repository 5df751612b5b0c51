#!/usr/bin/env bash
# LLM benchmark: rows/s of an `llm_generate` stage against llama.cpp's server at concurrency 1, 4
# and 16, beside a plain load script (load.py) sending the same requests to the same kind of
# server; and drover's CPU time per request. Each measurement gets a fresh server (16 slots, one
# thread), so neither side profits from the other's prompt cache.
#
# Usage: benches/llm/run.sh [ROWS] [MAX_TOKENS]     (default 32 rows, 16 tokens)
# Needs: target/release/drover, and `drover models pull smollm2` done.
set -euo pipefail
cd "$(dirname "$0")/../.."
rows=${1:-32}
tokens=${2:-16}
drover=$PWD/target/release/drover
cache=${DROVER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/drover}
gguf=$cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
runtime=$cache/runtime/xllamacpp-2026.10.11549
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 benches/llm/make_prompts.py --rows "$rows" --out "$work/prompts.jsonl" >/dev/null

serve() { # starts a fresh server; sets $port and $server_pid
  rm -f "$work/port"
  (sleep infinity | python3 benches/llm/serve.py --gguf "$gguf" --runtime "$runtime" --parallel 16 \
     --port-file "$work/port" 2>"$work/serve.log") &
  server_pid=$!
  while [ ! -s "$work/port" ]; do sleep 0.1; done
  port=$(cat "$work/port")
}
stop() { pkill -P "$server_pid" 2>/dev/null || true; kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }

printf '%-12s %5s %10s %10s %8s %14s\n' tool conc seconds rows/s tokens "cpu ms/request"
for c in 1 4 16; do
  serve
  out=$(python3 benches/llm/load.py --base-url "http://127.0.0.1:$port/v1" --model smollm2 --concurrency "$c" \
        --rows "$rows" --max-tokens "$tokens" --prompts "$work/prompts.jsonl" --column instruction)
  stop
  python3 -c "import json,sys; r=json.loads(sys.argv[1]); print('%-12s %5d %10.2f %10.2f %8d %14s' % ('load.py', r['concurrency'], r['seconds'], r['rows_per_s'], r['completion_tokens'], '-'))" "$out"

  serve
  rm -rf "$work/p" && mkdir -p "$work/p" && cp "$work/prompts.jsonl" "$work/p/"
  cat > "$work/p/drover.yaml" <<YAML
pipeline: llm-bench
llms:
  default: { base_url: "http://127.0.0.1:$port/v1", model: smollm2, max_concurrency: $c }
stages:
  prompts:
    op: read_table
    with: { path: prompts.jsonl }
  answers:
    op: llm_generate
    in: { table: prompts }
    with:
      template: "{{ instruction }}"
      sampling: { temperature: 0, max_tokens: $tokens }
YAML
  python3 - "$drover" "$work/p/drover.yaml" "$c" "$rows" <<'PY'
import json, os, resource, subprocess, sys, time
drover, pipeline, c, rows = sys.argv[1:]
before = resource.getrusage(resource.RUSAGE_CHILDREN)
t0 = time.perf_counter()
subprocess.run([drover, "run", "-f", pipeline], check=True, capture_output=True)
secs = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
out = os.path.join(os.path.dirname(pipeline), "answers.jsonl")
subprocess.run([drover, "export", "answers", out, "-f", pipeline], check=True, capture_output=True)
toks = sum(json.loads(l)["completion_tokens"] for l in open(out))
print('%-12s %5d %10.2f %10.2f %8d %14.3f' % ('drover', int(c), secs, int(rows) / secs, toks, cpu * 1000 / int(rows)))
PY
  stop
done
