#!/usr/bin/env bash
# Instructions per proxied HTTP/1.1 request, counted by callgrind: a figure that does not move
# with the machine's noise. canaryd (`--threads 1`) runs under `valgrind --tool=callgrind` in front
# of two nginx backends (benches/compare's job: 90/10, sticky by the `uid` cookie); h2load --h1
# sends N1 then N2 requests in two runs, and (I(N2) - I(N1)) / (N2 - N1) takes start-up and
# shut-down out.
#
#   bash benches/compare/instructions.sh [CANARYD_BIN] [PATH]      # defaults: target/release/canaryd, /
#
# PATH is the request target (e.g. /a/./b to measure the normaliser's slow path). Prints one line:
# `instructions/request N (N1 -> I1, N2 -> I2)`. Needs valgrind, nginx, h2load.
# KEEP=FILE keeps the N2 run's callgrind output there (for callgrind_annotate).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-$HERE/../../target/release/canaryd}
TARGET=${2:-/}
N1=${N1:-1000}
N2=${N2:-6000}
for tool in valgrind nginx h2load; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
DIR=$(mktemp -d)
trap 'kill $(cat "$DIR"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$DIR"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
STABLE=$(port); CANARY=$(port); H1=$(port); ADMIN=$(port)

for v in stable canary; do
  p=$STABLE; [ "$v" = canary ] && p=$CANARY
  mkdir -p "$DIR/$v"
  cat >"$DIR/$v/nginx.conf" <<EOF
worker_processes 1; daemon on; pid $DIR/$v.pid; error_log $DIR/$v/error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_timeout 300s; keepalive_requests 10000000;
  client_body_temp_path $DIR/$v/b; proxy_temp_path $DIR/$v/p; fastcgi_temp_path $DIR/$v/f;
  uwsgi_temp_path $DIR/$v/u; scgi_temp_path $DIR/$v/s;
  server { listen 127.0.0.1:$p; location / { add_header X-Variant $v always; return 200 "$v\n"; } } }
EOF
  nginx -p "$DIR/$v/" -c "$DIR/$v/nginx.conf" -e "$DIR/$v/error.log"
done
sed -e "s|@H1_PORT@|$H1|; s|@ADMIN_PORT@|$ADMIN|; s|@DIR@|$DIR|; s|@STABLE_PORT@|$STABLE|; s|@CANARY_PORT@|$CANARY|" \
  "$HERE/canaryd.yaml.tmpl" >"$DIR/canaryd.yaml"

# One callgrind run of canaryd serving $1 requests; prints its total instruction count.
count() {
  local out="$DIR/callgrind.$1"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" run --threads 1 --config "$DIR/canaryd.yaml" \
    >"$DIR/canaryd.$1.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  h2load --h1 -c 10 -n "$1" -H "cookie: uid=u-0000000000000001" "http://127.0.0.1:$H1$TARGET" >"$DIR/h2load.$1" 2>&1
  grep -q " 0 failed, 0 errored" "$DIR/h2load.$1" || { cat "$DIR/h2load.$1" >&2; exit 1; }
  grep -q "status codes: $1 2xx" "$DIR/h2load.$1" || { grep "status codes" "$DIR/h2load.$1" >&2; exit 1; }
  kill -INT "$pid"; wait "$pid" || true
  grep -m1 '^summary:' "$out" | awk '{print $2}'
}
I1=$(count "$N1")
I2=$(count "$N2")
if [ -n "${KEEP:-}" ]; then cp "$DIR/callgrind.$N2" "$KEEP"; fi
echo "instructions/request $(( (I2 - I1) / (N2 - N1) )) ($N1 -> $I1, $N2 -> $I2)"
