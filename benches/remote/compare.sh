#!/usr/bin/env bash
# drover's team cache against DVC's remote, on the same SeaweedFS (tests/support/s3-server.sh),
# through one counting proxy (tests/support/s3_proxy.py), with the same outputs:
#   small: N stages of one small output each (N=1000): push, cold pull, and a fresh checkout's
#          run that finds every stage on the remote (DVC: `dvc repro --pull`);
#   big:   one stage with one BIG_MB output (2048): push and cold pull.
# Prints a table and writes benches/results/remote.json. Needs python3 and PyPI (DVC goes into a
# venv under target/), ~4 x BIG_MB of free disk at the peak.
#
#   benches/remote/compare.sh                 # debug drover from target/debug
#   DROVER=target/release/drover N=1000 BIG_MB=2048 benches/remote/compare.sh
#   PARTS=big benches/remote/compare.sh       # one part (small, big); LIMIT=900: seconds a
#                                             # command may take before it is stopped (said so)
#   TOOLS=drover benches/remote/compare.sh    # one tool (drover, dvc)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
DROVER=${DROVER:-$root/target/debug/drover}
DROVER=$(realpath "$DROVER")
N=${N:-1000}
BIG_MB=${BIG_MB:-2048}
PARTS=${PARTS:-small big}
TOOLS=${TOOLS:-drover dvc}
LIMIT=${LIMIT:-900}
venv=${DVC_VENV:-$root/target/bench-dvc-venv}
if [ ! -x "$venv/bin/dvc" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "dvc[s3]==3.67.1" >&2
fi
DVC="$venv/bin/dvc"

work=$(mktemp -d /tmp/drover-bench-remote.XXXXXX)
proxy_pid=""
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  "$root/tests/support/s3-server.sh" stop "$work/s3" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/s3"
eval "$("$root/tests/support/s3-server.sh" start "$work/s3")"
export AWS_ACCESS_KEY_ID=$DROVER_TEST_S3_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$DROVER_TEST_S3_SECRET_ACCESS_KEY
# The proxy ends when its stdin does: a FIFO this script holds open, closed when it exits.
mkfifo "$work/proxy.stdin"
exec 7<>"$work/proxy.stdin"
python3 "$root/tests/support/s3_proxy.py" --upstream "$DROVER_TEST_S3_ENDPOINT" \
  --port-file "$work/proxy.port" <&7 &
proxy_pid=$!
for _ in $(seq 100); do [ -s "$work/proxy.port" ] && break; sleep 0.1; done
port=$(cat "$work/proxy.port")
endpoint="http://127.0.0.1:$port"
bucket=$DROVER_TEST_S3_BUCKET

stats() { curl -s -X "${2:-GET}" "$endpoint/_proxy/$1"; }
results=()
# measure NAME COMMAND...: time and requests of one command (run in the current directory).
measure() {
  local name=$1
  shift
  stats reset POST >/dev/null
  local t0 t1
  t0=$(date +%s.%N)
  local rc=0
  timeout "$LIMIT" "$@" >"$work/$name.out" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  if [ "$rc" = 124 ]; then
    printf '%-34s %8s s   stopped: not done in %s s\n' "$name" ">$LIMIT" "$LIMIT"
    results+=("{\"name\": \"$name\", \"seconds\": null, \"stopped_after\": $LIMIT}")
    return 0
  fi
  [ "$rc" = 0 ] || { cat "$work/$name.out" >&2; echo "bench: $name failed" >&2; exit 1; }
  local requests
  requests=$(stats stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  local secs
  secs=$(python3 -c "print(round($t1 - $t0, 2))")
  printf '%-34s %8s s %8s requests\n' "$name" "$secs" "$requests"
  results+=("{\"name\": \"$name\", \"seconds\": $secs, \"requests\": $requests}")
}

drover_remote() { echo "{\"url\": \"s3://$bucket/drover-$1\", \"endpoint\": \"$endpoint\", \"allow_http\": true}"; }

dvc_repo() { # dvc_repo DIR PREFIX: a git repo with DVC and its remote on the proxy
  mkdir -p "$1"
  (cd "$1" && git init -q && git config user.email b@b && git config user.name bench \
    && "$DVC" init -q && "$DVC" remote add -q -d s3 "s3://$bucket/dvc-$2" \
    && "$DVC" remote modify s3 endpointurl "$endpoint" && "$DVC" config cache.type hardlink,symlink \
    && "$DVC" config core.analytics false && git add -A && git commit -qm init)
}

big_gen=$work/gen_big.py
cat >"$big_gen" <<'PY'
import random, sys
rng = random.Random(7)
with open(sys.argv[1], "wb") as f:
    for _ in range(int(sys.argv[2])):
        f.write(rng.randbytes(1 << 20))
PY

# --- small: N stages, one small output each ---------------------------------------------------
if [[ " $PARTS " == *" small "* ]]; then
items=$(python3 -c "print(', '.join(str(i) for i in range($N)))")
small_yaml="stages:
  item:
    op: command
    matrix: { i: [$items] }
    with: { run: \"echo item \${matrix.i} > \${out.out}\" }
    out: { out: blob }
"
mkdir -p "$work/d1" "$work/d2" "$work/d3"
for d in d1 d2 d3; do printf '%s' "$small_yaml" >"$work/$d/drover.yaml"; done
remote=$(drover_remote small)
echo "== $N small outputs"
if [[ " $TOOLS " == *" drover "* ]]; then
(cd "$work/d1" && "$DROVER" run -j 8 >/dev/null 2>&1)
cd "$work/d1" && measure "drover push" "$DROVER" push --remote "$remote" && cd "$work"
cd "$work/d2" && measure "drover pull (cold)" "$DROVER" pull --remote "$remote" && cd "$work"
cd "$work/d3" && measure "drover run, all on the remote" "$DROVER" run --remote "$remote" && cd "$work"
fi
if [[ " $TOOLS " == *" dvc "* ]]; then
dvc_repo "$work/v1" small
python3 - "$N" >"$work/v1/dvc.yaml" <<'PY'
import sys
n = int(sys.argv[1])
print("stages:\n  item:\n    foreach: [" + ", ".join(str(i) for i in range(n)) + "]")
print("    do:\n      cmd: mkdir -p out && echo item ${item} > out/${item}.txt\n      outs: [\"out/${item}.txt\"]")
PY
(cd "$work/v1" && "$DVC" repro -q >/dev/null && git add -A && git commit -qm run)
cd "$work/v1" && measure "dvc push" "$DVC" push -q && cd "$work"
git clone -q "$work/v1" "$work/v2" && (cd "$work/v2" && "$DVC" config cache.type hardlink,symlink)
cd "$work/v2" && measure "dvc pull (cold)" "$DVC" pull -q && cd "$work"
git clone -q "$work/v1" "$work/v3" && (cd "$work/v3" && "$DVC" config cache.type hardlink,symlink)
cd "$work/v3" && measure "dvc repro --pull, all on the remote" "$DVC" repro --pull -q && cd "$work"
fi
rm -rf "$work"/d? "$work"/v?
fi

# --- big: one output of BIG_MB ------------------------------------------------------------------
if [[ " $PARTS " == *" big "* ]]; then
echo "== one ${BIG_MB} MB output"
big_yaml="stages:
  big:
    op: command
    with: { run: \"python3 $big_gen \${out.out} $BIG_MB\" }
    out: { out: blob }
"
mkdir -p "$work/b1" "$work/b2"
for d in b1 b2; do printf '%s' "$big_yaml" >"$work/$d/drover.yaml"; done
remote=$(drover_remote big)
if [[ " $TOOLS " == *" drover "* ]]; then
(cd "$work/b1" && "$DROVER" run >/dev/null 2>&1)
cd "$work/b1" && measure "drover push (big)" "$DROVER" push --remote "$remote" && cd "$work"
rm -rf "$work/b1"
cd "$work/b2" && measure "drover pull (big, cold)" "$DROVER" pull --remote "$remote" && cd "$work"
rm -rf "$work/b2"
fi
if [[ " $TOOLS " == *" dvc "* ]]; then
dvc_repo "$work/w1" big
printf 'stages:\n  big:\n    cmd: python3 %s big.bin %s\n    outs: [big.bin]\n' "$big_gen" "$BIG_MB" >"$work/w1/dvc.yaml"
(cd "$work/w1" && "$DVC" repro -q >/dev/null && git add -A && git commit -qm run)
cd "$work/w1" && measure "dvc push (big)" "$DVC" push -q && cd "$work"
git clone -q "$work/w1" "$work/w2" && rm -rf "$work/w1" && (cd "$work/w2" && "$DVC" config cache.type hardlink,symlink)
cd "$work/w2" && measure "dvc pull (big, cold)" "$DVC" pull -q && cd "$work"
fi
fi

mkdir -p "$root/benches/results"
printf '{"n": %s, "big_mb": %s, "parts": "%s", "drover": "%s", "results": [%s]}\n' "$N" "$BIG_MB" "$PARTS" "$DROVER" \
  "$(IFS=,; echo "${results[*]}")" >"$root/benches/results/remote.json"
echo "written: benches/results/remote.json"
