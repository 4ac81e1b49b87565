#!/usr/bin/env bash
# Instructions per proxied HTTP/1.1 request of a canaryd binary, counted by callgrind:
# repeatable on a shared, noisy machine where req/s is not (see README.md, "Optimisations
# tried"). Same job and backends as run.sh; canaryd runs `--threads 1` under valgrind, and
# the figure is the difference of a 6,000- and a 1,000-request run (h2load --h1, 10
# connections, one user), divided by 5,000, so start-up and shutdown cancel out.
#
#   bash benches/compare/instructions.sh [BIN] [ENV=VALUE...]
#
# BIN defaults to target/release/canaryd; ENV=VALUE pairs go to canaryd's environment.
# Needs valgrind, nginx and h2load (nghttp2-client); ports BENCH_PORT_BASE+41..+46
# (default base 18100).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${1:-$HERE/../../target/release/canaryd}
shift || true
for tool in valgrind nginx h2load curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind nginx nghttp2-client curl)" >&2; exit 1; }
done
BASE=${BENCH_PORT_BASE:-18100}
STABLE=$((BASE + 41)) CANARY=$((BASE + 42)) PROXY=$((BASE + 43)) ADMIN=$((BASE + 44))
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.2; rm -rf "$W"' EXIT

render() { # template out KEY=VALUE...
  local t=$1 o=$2
  shift 2
  cp "$t" "$o"
  for kv in "$@"; do sed -i "s|@${kv%%=*}@|${kv#*=}|g" "$o"; done
}
for b in "stable $STABLE $((BASE + 45))" "canary $CANARY $((BASE + 46))"; do
  set -- $b
  mkdir -p "$W/$1"
  render "$HERE/nginx-backend.conf.tmpl" "$W/$1/nginx.conf" DIR="$W/$1" VARIANT="$1" PORT="$2" \
    STATUS_PORT="$3" EXTRA_LISTEN= MAXCONN=1024 NOFILE=4096
  nginx -p "$W/$1/" -c "$W/$1/nginx.conf" -e "$W/$1/error.log" >/dev/null 2>&1 &
done
render "$HERE/canaryd.yaml.tmpl" "$W/canaryd.yaml" DIR="$W" H1_PORT="$PROXY" ADMIN_PORT="$ADMIN" \
  STABLE_PORT="$STABLE" CANARY_PORT="$CANARY"

count() { # requests -> total instructions of one canaryd run
  rm -f "$W/cg.out"
  env "${ENVS[@]}" valgrind --tool=callgrind --callgrind-out-file="$W/cg.out" \
    "$BIN" run --threads 1 --config "$W/canaryd.yaml" >"$W/canaryd.log" 2>&1 &
  local pid=$! i
  for i in $(seq 300); do
    curl -fs -o /dev/null "http://127.0.0.1:$PROXY/" && break
    sleep 0.1
  done
  h2load --h1 -n "$1" -c 10 -H "Cookie: uid=5f1b7c0e9a2d4c6e8b3a1f0d2c4e6a8b" "http://127.0.0.1:$PROXY/" >"$W/h2load.log"
  grep -q " 0 failed, 0 errored" "$W/h2load.log" || { cat "$W/h2load.log" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ {print $2; exit}' "$W/cg.out"
}
ENVS=("$@")
[ ${#ENVS[@]} -gt 0 ] || ENVS=(CANARYD_BENCH=1)
small=$(count 1000)
large=$(count 6000)
echo "$(( (large - small) / 5000 )) instructions per request ($BIN ${ENVS[*]})"
