#!/usr/bin/env bash
# Side-by-side load comparison of canaryd, nginx and HAProxy doing the same canary job
# (90/10 split, sticky by the `uid` cookie, keep-alive upstream pools, X-Forwarded-For)
# in front of two nginx backends, all on 127.0.0.1. See benches/compare/README.md.
#
#   bash benches/compare/run.sh            # full run (~15 min), writes benches/compare/RESULTS.md
#   bash benches/compare/run.sh --smoke    # < 1 min after the build, for CI; report in a temp file
#
# Environment: CARGO_TARGET_DIR (where canaryd is built; default: the workspace's target/),
# CANARYD_BIN (benchmark this binary instead of building), CANARYD_REV (its label in the
# report), BENCH_PORT_BASE (default 18100; ports BASE+1..BASE+32 are used), CI=true (a tool
# that cannot be installed fails the run), KEEP_WORK=1 (keep the temp dir with raw outputs),
# and the BENCH_* knobs printed by --help.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=python3

usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  cat <<EOF
Options:
  --smoke        3 short rounds, 500 idle connections, 20,000 split requests; oha is used
                 only if already installed; the report goes to a temp file (or --out)
  --out FILE     write the report here instead of the default
  -h, --help     this text
Knobs (environment, defaults full/smoke): BENCH_ROUNDS (5/3), BENCH_DURATION seconds per
load run (8/1), BENCH_WARMUP seconds (1/0), BENCH_IDLE_CONNS (10000/500), BENCH_RSS_ROUNDS
(3/1), BENCH_LAT_ROUNDS (=rounds/1), BENCH_SHARE_REQUESTS (1000000/20000), BENCH_STICKY_USERS (2000/200),
BENCH_CONNS wrk/oha connections (50), BENCH_H2_CONNS x BENCH_H2_STREAMS h2load (10 x 10).
EOF
}

MODE=full
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) MODE=smoke ;;
    --out) OUT=${2:?--out needs a file}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$MODE" = full ]; then
  ROUNDS=${BENCH_ROUNDS:-5}; DURATION=${BENCH_DURATION:-8}; WARMUP=${BENCH_WARMUP:-1}
  IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}; RSS_ROUNDS=${BENCH_RSS_ROUNDS:-3}
  SHARE_REQUESTS=${BENCH_SHARE_REQUESTS:-1000000}; STICKY_USERS=${BENCH_STICKY_USERS:-2000}
  SHARE_MAX_SECONDS=150; LAT_ROUNDS=${BENCH_LAT_ROUNDS:-$ROUNDS}; SETTLE=1
  OUT=${OUT:-$HERE/RESULTS.md}
else
  ROUNDS=${BENCH_ROUNDS:-3}; DURATION=${BENCH_DURATION:-1}; WARMUP=${BENCH_WARMUP:-0}
  IDLE_CONNS=${BENCH_IDLE_CONNS:-500}; RSS_ROUNDS=${BENCH_RSS_ROUNDS:-1}
  SHARE_REQUESTS=${BENCH_SHARE_REQUESTS:-20000}; STICKY_USERS=${BENCH_STICKY_USERS:-200}
  SHARE_MAX_SECONDS=20; LAT_ROUNDS=${BENCH_LAT_ROUNDS:-1}; SETTLE=0.3
fi
CONNS=${BENCH_CONNS:-50}
H2_CONNS=${BENCH_H2_CONNS:-10}
H2_STREAMS=${BENCH_H2_STREAMS:-10}
# Every fixed-cookie load (h2load, oha) sends this user; wrk sends a pool of 1,000 users.
FIXED_UID=5f1b7c0e9a2d4c6e8b3a1f0d2c4e6a8b
PROXY_CPU=0  # the proxy under test
LOAD_CPU=1   # load generators, backends, helper scripts
CI=${CI:-false}
START_EPOCH=$(date +%s)

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$(date +%T)" "$*" >&2; NOTES+=("$*"); }
die() { printf '[%s] ERROR: %s\n' "$(date +%T)" "$*" >&2; exit 1; }
NOTES=()
HARD_FAILURES=0
hard_fail() { warn "$*"; HARD_FAILURES=$((HARD_FAILURES + 1)); }

# ---------------------------------------------------------------- tools
APT_UPDATED=0
apt_install() {
  [ "$(id -u)" = 0 ] || { log "not root: cannot apt-get install $*"; return 1; }
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    apt-get update -qq || return 1
    APT_UPDATED=1
  fi
  log "apt-get install -y $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || return 1
}

[ -x "$HOME/.cargo/bin/oha" ] && case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) PATH="$PATH:$HOME/.cargo/bin" ;; esac
ensure_tools() {
  # command -> Debian package; nginx also provides the backends, so it is always required
  local -A pkg=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [h2load]=nghttp2-client [taskset]=util-linux
    [curl]=curl [ss]=iproute2 [pgrep]=procps [python3]=python3 [lscpu]=util-linux [git]=git)
  local missing=() c
  for c in "${!pkg[@]}"; do command -v "$c" >/dev/null || missing+=("${pkg[$c]}"); done
  if [ ${#missing[@]} -gt 0 ]; then
    # shellcheck disable=SC2207
    missing=($(printf '%s\n' "${missing[@]}" | sort -u))
    apt_install "${missing[@]}" || log "could not install: ${missing[*]}"
  fi
  for c in nginx wrk taskset curl ss pgrep python3; do
    command -v "$c" >/dev/null || die "$c is required and could not be installed (package ${pkg[$c]})"
  done
  HAVE_HAPROXY=1; HAVE_H2LOAD=1; HAVE_OHA=1
  if ! command -v haproxy >/dev/null; then
    [ "$CI" = true ] && die "haproxy could not be installed (CI=true)"
    warn "haproxy is missing and could not be installed: the HAProxy target is skipped"
    HAVE_HAPROXY=0
  fi
  if ! command -v h2load >/dev/null; then
    [ "$CI" = true ] && die "h2load (nghttp2-client) could not be installed (CI=true)"
    warn "h2load is missing and could not be installed: the HTTP/2 figures are skipped"
    HAVE_H2LOAD=0
  fi
  if ! command -v oha >/dev/null; then
    if [ "$MODE" = smoke ]; then
      warn "oha is not installed; --smoke does not compile it (cargo install oha --locked), so the added-latency figure is skipped"
      HAVE_OHA=0
    else
      log "cargo install oha --locked (a few minutes, once)"
      if cargo install oha --locked >&2 && command -v oha >/dev/null; then :; else
        [ "$CI" = true ] && die "oha could not be installed (CI=true)"
        warn "oha could not be installed: the added-latency figure is skipped"
        HAVE_OHA=0
      fi
    fi
  fi
}

# ---------------------------------------------------------------- canaryd
build_canaryd() {
  if [ -n "${CANARYD_BIN:-}" ]; then
    [ -x "$CANARYD_BIN" ] || die "CANARYD_BIN=$CANARYD_BIN is not an executable"
    CANARYD_LABEL="${CANARYD_REV:-unknown} (prebuilt: $CANARYD_BIN)"
    return
  fi
  command -v cargo >/dev/null || die "cargo is required to build canaryd (or set CANARYD_BIN)"
  local target_dir
  target_dir=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
    $PY -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  log "cargo build --release -p canary-control (target dir $target_dir)"
  (cd "$REPO" && cargo build --release -p canary-control) >&2 || die "canaryd does not build"
  CANARYD_BIN="$target_dir/release/canaryd"
  local rev dirty=""
  rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no -- config proxy control Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    dirty="-dirty"
  fi
  CANARYD_LABEL="${CANARYD_REV:-$rev$dirty} (built from $REPO)"
}

# ---------------------------------------------------------------- processes
declare -A PID=()
declare -A AFFINITY=()
WORK=""
cleanup() {
  local rc=$? name p
  trap - EXIT INT TERM
  for name in "${!PID[@]}"; do stop_proc "$name"; done
  [ -n "${IDLE_PID:-}" ] && kill "$IDLE_PID" 2>/dev/null
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$rc" != 0 ] || [ "${KEEP_WORK:-0}" = 1 ]; then
      log "raw outputs kept in $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}

# Children of a pid (nginx master -> worker); one level is all we need.
children() { pgrep -P "$1" || true; }
proc_tree() { local p=${PID[$1]}; echo "$p"; children "$p"; }

stop_proc() {
  local name=$1 p=${PID[$1]:-} kids i
  [ -n "$p" ] || return 0
  kids=$(children "$p" || true)
  kill -TERM "$p" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then
    kill -KILL "$p" 2>/dev/null || true
  fi
  for i in $kids; do kill -KILL "$i" 2>/dev/null || true; done
  wait "$p" 2>/dev/null || true
  unset "PID[$name]"
}

# Sum of utime+stime (clock ticks) of a target's processes.
cpu_ticks() {
  local t=0 p line rest
  for p in $(proc_tree "$1"); do
    read -r line <"/proc/$p/stat" || continue
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    t=$((t + ${12} + ${13}))
  done
  echo "$t"
}
# Sum of VmRSS (KiB) of a target's processes.
rss_kib() {
  local t=0 p v
  for p in $(proc_tree "$1"); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

render() {
  local tmpl=$1 out=$2
  shift 2
  $PY - "$tmpl" "$out" "$@" <<'EOF'
import re, sys
tmpl, out, *pairs = sys.argv[1:]
text = open(tmpl).read()
for pair in pairs:
    key, _, value = pair.partition("=")
    text = text.replace("@%s@" % key, value)
left = re.findall(r"@[A-Z0-9_]+@", text)
if left:
    sys.exit("unfilled placeholders in %s: %s" % (tmpl, sorted(set(left))))
open(out, "w").write(text)
EOF
}

CMDS=""
logcmd() { # phase target round -- command...
  local phase=$1 target=$2 round=$3
  shift 4
  printf '%s\t%s\t%s\t%s\n' "$phase" "$target" "$round" "$(printf '%q ' "$@")" >>"$CMDS"
}
run_logged() { logcmd "$@"; shift 4; "$@"; }

wait_ready() { # name url [curl args]
  local name=$1 url=$2 i
  shift 2
  for i in $(seq 100); do
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then
      die "$name exited at start; its log: $(tail -5 "$WORK/$name/out.log" 2>/dev/null)"
    fi
    curl -fsS -o /dev/null --max-time 1 "$@" -H "Cookie: uid=$FIXED_UID" "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$name does not answer $url after 10 s; its log: $(tail -5 "$WORK/$name/out.log" 2>/dev/null)"
}

start_backend() { # name variant port status_port extra_listen
  local name=$1 dir="$WORK/$1"
  mkdir -p "$dir"
  render "$HERE/nginx-backend.conf.tmpl" "$dir/nginx.conf" DIR="$dir" VARIANT="$2" PORT="$3" \
    STATUS_PORT="$4" EXTRA_LISTEN="$5" MAXCONN="$MAXCONN" NOFILE="$NOFILE"
  local cmd=(taskset -c "$LOAD_CPU" nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log")
  launch "$name" "${cmd[@]}"
}

start_proxy() { # target
  local t=$1 dir="$WORK/$1"
  mkdir -p "$dir"
  case "$t" in
    nginx)
      render "$HERE/nginx-proxy.conf.tmpl" "$dir/nginx.conf" DIR="$dir" H1_PORT="$NGX_H1" \
        STABLE_PORT="$STABLE_PORT" CANARY_PORT="$CANARY_PORT" NGINX_VERSION="$NGINX_VERSION" \
        H2_NOTE="$NGINX_H2_NOTE" H2_LISTEN="$(h2_listen "$NGX_H2")" MAXCONN="$MAXCONN" NOFILE="$NOFILE"
      launch nginx taskset -c "$PROXY_CPU" nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log"
      wait_ready nginx "http://127.0.0.1:$NGX_H1/"
      ;;
    haproxy)
      render "$HERE/haproxy.cfg.tmpl" "$dir/haproxy.cfg" DIR="$dir" H1_PORT="$HAP_H1" H2_PORT="$HAP_H2" \
        STABLE_PORT="$STABLE_PORT" CANARY_PORT="$CANARY_PORT" MAXCONN="$MAXCONN"
      launch haproxy taskset -c "$PROXY_CPU" haproxy -db -f "$dir/haproxy.cfg"
      wait_ready haproxy "http://127.0.0.1:$HAP_H1/"
      ;;
    canaryd)
      render "$HERE/canaryd.yaml.tmpl" "$dir/canaryd.yaml" DIR="$dir" H1_PORT="$CND_PORT" ADMIN_PORT="$CND_ADMIN" \
        STABLE_PORT="$STABLE_PORT" CANARY_PORT="$CANARY_PORT"
      "$CANARYD_BIN" check --config "$dir/canaryd.yaml" >"$dir/check.log" 2>&1 ||
        die "canaryd rejects $dir/canaryd.yaml: $(cat "$dir/check.log")"
      # --threads 1: one single-threaded runtime, like nginx's one worker and HAProxy's
      # nbthread 1 (the default is a work-stealing runtime with one worker per CPU).
      launch canaryd taskset -c "$PROXY_CPU" "$CANARYD_BIN" run --threads 1 --config "$dir/canaryd.yaml"
      wait_ready canaryd "http://127.0.0.1:$CND_PORT/"
      ;;
  esac
}
# Start a long-running process in the background; `env` and `taskset` exec, so $! is its pid.
launch() { # name command...
  local name=$1
  shift
  logcmd setup "$name" 0 -- "$@"
  "$@" >"$WORK/$name/out.log" 2>&1 </dev/null &
  PID[$name]=$!
}
restart_proxy() { stop_proc "$1"; start_proxy "$1"; }

h2_listen() { # port -> the nginx directive for h2c with prior knowledge on a plain port
  if [ "$NGINX_NEW_H2" = 1 ]; then echo "listen 127.0.0.1:$1; http2 on;"; else echo "listen 127.0.0.1:$1 http2;"; fi
}

h1_port() { case $1 in direct) echo "$STABLE_PORT" ;; nginx) echo "$NGX_H1" ;; haproxy) echo "$HAP_H1" ;; canaryd) echo "$CND_PORT" ;; esac; }
h2_port() { case $1 in direct) echo "$STABLE_H2" ;; nginx) echo "$NGX_H2" ;; haproxy) echo "$HAP_H2" ;; canaryd) echo "$CND_PORT" ;; esac; }

# Connections both backends ever accepted (stub_status); each read itself adds one per backend.
backend_accepts() {
  local a b
  a=$(curl -fsS --max-time 2 "http://127.0.0.1:$STABLE_STATUS/" | awk 'NR==3 {print $1}')
  b=$(curl -fsS --max-time 2 "http://127.0.0.1:$CANARY_STATUS/" | awk 'NR==3 {print $1}')
  echo $((a + b))
}

RESULTS=""
record() { # figure target round value
  printf '{"figure":"%s","target":"%s","round":%s,"value":%s}\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
}
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
calc0() { awk "BEGIN { printf \"%.0f\", $1 }"; }
# "cpuN busy total" jiffies of the proxy CPU and the load CPU (everyone's processes, not only ours)
cpu_busy() {
  awk -v a="cpu$PROXY_CPU" -v b="cpu$LOAD_CPU" '$1 == a || $1 == b {
    busy = $2 + $3 + $4 + $7 + $8 + $9; printf "%s %d %d ", $1, busy, busy + $5 + $6 }' /proc/stat
}
busy_pct() { # before after -> busy % of the proxy CPU and of the load CPU between the two
  awk -v x="$1" -v y="$2" -v a="cpu$PROXY_CPU" -v b="cpu$LOAD_CPU" 'BEGIN {
    n = split(x, p, " "); for (i = 1; i <= n; i += 3) { B0[p[i]] = p[i + 1]; T0[p[i]] = p[i + 2] }
    n = split(y, q, " "); for (i = 1; i <= n; i += 3) { B1[q[i]] = q[i + 1]; T1[q[i]] = q[i + 2] }
    da = T1[a] - T0[a]; db = T1[b] - T0[b]
    printf "%.1f %.1f\n", da ? 100 * (B1[a] - B0[a]) / da : 0, db ? 100 * (B1[b] - B0[b]) / db : 0 }'
}

rotated() { # round -> the targets, rotated so each target takes each position in turn
  local r=$1 n=${#TARGETS[@]} i
  for ((i = 0; i < n; i++)); do echo "${TARGETS[$(((i + r) % n))]}"; done
}
is_proxy() { [ "$1" != direct ]; }

# ---------------------------------------------------------------- phases
phase_throughput() { # round target
  local r=$1 t=$2 out="$WORK/raw/h1-$2-$1.txt" url c0 c1 t0 t1 a0 a1 s0 s1 b0 b1 requests dur errors wpid
  url="http://127.0.0.1:$(h1_port "$t")/"
  if [ "$WARMUP" != 0 ]; then
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$HERE/wrk-users.lua" "$url" -- "$r" 1000 >/dev/null
  fi
  local cmd=(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$HERE/wrk-users.lua" "$url" -- "$r" 1000)
  logcmd h1 "$t" "$r" -- "${cmd[@]}"
  c0=0; is_proxy "$t" && c0=$(cpu_ticks "$t"); s0=$(cpu_busy); t0=$(date +%s%N)
  "${cmd[@]}" >"$out" 2>&1 &
  wpid=$!
  # steady state = the middle half of the run: no connection set-up or tear-down in it
  sleep "$(calc "$DURATION / 4")"; a0=$(backend_accepts)
  sleep "$(calc "$DURATION / 2")"; a1=$(backend_accepts)
  wait "$wpid" || true
  t1=$(date +%s%N); c1=0; is_proxy "$t" && c1=$(cpu_ticks "$t"); s1=$(cpu_busy)
  if ! read -r requests dur errors < <($PY "$HERE/report.py" parse-wrk "$out"); then
    hard_fail "h1 $t round $r: no wrk result ($(tail -2 "$out" | tr '\n' ' '))"; return
  fi
  [ "$requests" -gt 0 ] || { hard_fail "h1 $t round $r: no request served"; return; }
  record h1_rps "$t" "$r" "$(calc "$requests / $dur")"
  record h1_errors "$t" "$r" "$errors"
  read -r b0 b1 < <(busy_pct "$s0" "$s1")
  record h1_cpu0_busy "$t" "$r" "$b0"
  record h1_cpu1_busy "$t" "$r" "$b1"
  if is_proxy "$t"; then
    record h1_cpu_us "$t" "$r" "$(calc "($c1 - $c0) * 1000000 / $CLK_TCK / $requests")"
    record h1_cpu_util "$t" "$r" "$(calc "($c1 - $c0) * 100 / $CLK_TCK / (($t1 - $t0) / 1e9)")"
    record h1_new_upstream "$t" "$r" "$((a1 - a0 - 2))"
  fi
  [ "$errors" -gt 0 ] && warn "h1 $t round $r: $errors errors / $requests requests"
  log "  h1 $t: $(calc0 "$requests / $dur") req/s, $errors errors; CPU0 ${b0%.*} % busy, CPU1 ${b1%.*} % busy"
}

phase_h2() { # round target
  local r=$1 t=$2 out="$WORK/raw/h2-$2-$1.txt" url c0 c1 t0 t1 ok dur failed
  url="http://127.0.0.1:$(h2_port "$t")/"
  if [ "$WARMUP" != 0 ]; then
    taskset -c "$LOAD_CPU" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$WARMUP" -H "cookie: uid=$FIXED_UID" "$url" >/dev/null 2>&1 || true
  fi
  c0=0; is_proxy "$t" && c0=$(cpu_ticks "$t"); t0=$(date +%s%N)
  run_logged h2 "$t" "$r" -- taskset -c "$LOAD_CPU" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$DURATION" \
    -H "cookie: uid=$FIXED_UID" "$url" >"$out" 2>&1 || true
  t1=$(date +%s%N); c1=0; is_proxy "$t" && c1=$(cpu_ticks "$t")
  if ! read -r ok dur failed < <($PY "$HERE/report.py" parse-h2load "$out"); then
    hard_fail "h2 $t round $r: no h2load result ($(grep -m2 -i 'error\|fail' "$out" | tr '\n' ' '))"; return
  fi
  [ "$ok" -gt 0 ] || { hard_fail "h2 $t round $r: no request succeeded"; return; }
  record h2_rps "$t" "$r" "$(calc "$ok / $dur")"
  record h2_errors "$t" "$r" "$failed"
  if is_proxy "$t"; then
    record h2_cpu_us "$t" "$r" "$(calc "($c1 - $c0) * 1000000 / $CLK_TCK / $ok")"
    record h2_cpu_util "$t" "$r" "$(calc "($c1 - $c0) * 100 / $CLK_TCK / (($t1 - $t0) / 1e9)")"
  fi
  [ "$failed" -gt 0 ] && warn "h2 $t round $r: $failed failed requests"
  log "  h2 $t: $(calc0 "$ok / $dur") req/s, $failed failed"
}

phase_latency() { # round target rate
  local r=$1 t=$2 rate=$3 out="$WORK/raw/lat-$2-$1.json" url p50 p99 rps errors
  url="http://127.0.0.1:$(h1_port "$t")/"
  run_logged latency "$t" "$r" -- taskset -c "$LOAD_CPU" oha -z "${DURATION}s" -c "$CONNS" -q "$rate" --latency-correction \
    --no-tui --output-format json -H "Cookie: uid=$FIXED_UID" "$url" >"$out" 2>"$out.err" || true
  if ! read -r p50 p99 rps errors < <($PY "$HERE/report.py" parse-oha "$out"); then
    hard_fail "latency $t round $r: no oha result ($(head -c 300 "$out.err"))"; return
  fi
  record lat_p50_ms "$t" "$r" "$p50"
  record lat_p99_ms "$t" "$r" "$p99"
  record lat_rps "$t" "$r" "$rps"
  record lat_errors "$t" "$r" "$errors"
  [ "$errors" -gt 0 ] && warn "latency $t round $r: $errors errors"
  log "  latency $t @ $rate req/s: p50 ${p50} ms, p99 ${p99} ms"
}

IDLE_PID=""
phase_rss() { # round target
  local r=$1 t=$2 out="$WORK/raw/idle-$2-$1.txt" rss0 rss1 ok failed i
  restart_proxy "$t"
  sleep "$SETTLE"
  rss0=$(rss_kib "$t")
  record rss_idle_kib "$t" "$r" "$rss0"
  local cmd=(taskset -c "$LOAD_CPU" $PY "$HERE/idle_conns.py" --port "$(h1_port "$t")" -n "$IDLE_CONNS" --hold 120)
  logcmd rss "$t" "$r" -- "${cmd[@]}"
  "${cmd[@]}" >"$out" 2>&1 </dev/null &
  IDLE_PID=$!
  for i in $(seq 1200); do grep -qs '^READY' "$out" && break; kill -0 "$IDLE_PID" 2>/dev/null || break; sleep 0.1; done
  if ! grep -qs '^READY' "$out"; then
    kill "$IDLE_PID" 2>/dev/null || true; wait "$IDLE_PID" 2>/dev/null || true; IDLE_PID=""
    hard_fail "rss $t round $r: idle connections never READY ($(tail -2 "$out" | tr '\n' ' '))"; return
  fi
  sleep "$SETTLE"
  rss1=$(rss_kib "$t")
  kill "$IDLE_PID" 2>/dev/null || true; wait "$IDLE_PID" 2>/dev/null || true; IDLE_PID=""
  read -r ok failed < <(sed -n 's/^READY ok=\([0-9]*\) failed=\([0-9]*\)/\1 \2/p' "$out")
  [ "$ok" -gt 0 ] || { hard_fail "rss $t round $r: no idle connection got a response"; return; }
  record rss_per_conn_kib "$t" "$r" "$(calc "($rss1 - $rss0) / $ok")"
  record idle_failed "$t" "$r" "$failed"
  [ "$failed" -gt 0 ] && warn "rss $t round $r: $failed of $IDLE_CONNS idle connections failed"
  log "  rss $t: idle ${rss0} KiB, +$(calc "($rss1 - $rss0) / $ok") KiB per idle connection ($ok open, $failed failed)"
}

phase_share() { # target
  local t=$1 port out="$WORK/raw/share-$1.txt" sticky="$WORK/raw/sticky-$1" s c o dur users same changed failed
  port=$(h1_port "$t")
  run_logged share "$t" 1 -- taskset -c "$LOAD_CPU" $PY "$HERE/sticky.py" record --port "$port" \
    --users "$STICKY_USERS" --out "$sticky.first"
  local cmd=(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${SHARE_MAX_SECONDS}s" -s "$HERE/wrk-share.lua"
    "http://127.0.0.1:$port/" -- "$SHARE_REQUESTS" 7 "$out.done")
  logcmd share "$t" 1 -- "${cmd[@]}"
  "${cmd[@]}" >"$out" 2>&1 &
  local wpid=$!
  while kill -0 "$wpid" 2>/dev/null; do
    [ -e "$out.done" ] && kill -INT "$wpid" 2>/dev/null
    sleep 0.2
  done
  wait "$wpid" || true
  run_logged share "$t" 1 -- taskset -c "$LOAD_CPU" $PY "$HERE/sticky.py" verify --port "$port" --in "$sticky.first" \
    >"$sticky.verify" 2>&1 || true
  if read -r s c o dur < <($PY "$HERE/report.py" parse-share "$out") && [ $((s + c)) -gt 0 ]; then
    record share_requests "$t" 1 "$((s + c + o))"
    record share_canary_pct "$t" 1 "$(calc "$c * 100 / ($s + $c)")"
    record share_rps "$t" 1 "$(calc "($s + $c + $o) / $dur")"
    record share_other "$t" 1 "$o"
    [ $((s + c)) -lt "$SHARE_REQUESTS" ] && warn "share $t: only $((s + c)) of $SHARE_REQUESTS requests answered within ${SHARE_MAX_SECONDS}s"
    log "  share $t: $c canary of $((s + c)) ($(calc "$c * 100 / ($s + $c)") %), $o other, in $(calc0 "$dur") s"
  else
    hard_fail "share $t: no wrk result ($(tail -2 "$out" | tr '\n' ' '))"
  fi
  if read -r users same changed failed < <($PY "$HERE/report.py" parse-sticky "$sticky.verify") && [ "$users" -gt 0 ]; then
    record sticky_pct "$t" 1 "$(calc "$same * 100 / $users")"
    record sticky_changed "$t" 1 "$changed"
    record sticky_failed "$t" 1 "$failed"
    log "  sticky $t: $same of $users users kept their variant ($changed changed, $failed failed)"
  else
    hard_fail "sticky $t: no result ($(tail -2 "$sticky.verify" | tr '\n' ' '))"
  fi
}

# ---------------------------------------------------------------- main
ensure_tools
build_canaryd
"$CANARYD_BIN" --version >/dev/null 2>&1 || die "$CANARYD_BIN does not run"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/canaryd-compare.XXXXXX")
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK/raw"
RESULTS="$WORK/results.jsonl"; : >"$RESULTS"
CMDS="$WORK/commands.tsv"; : >"$CMDS"
CLK_TCK=$(getconf CLK_TCK)

# The idle connections plus room for the load runs. HAProxy asks for two descriptors per
# connection (client + server side); idle client connections need only one, so where the
# hard limit cannot be raised (containers without CAP_SYS_RESOURCE) we go on with it.
MAXCONN=$((IDLE_CONNS + 2000))
want_nofile=$((MAXCONN * 2 + 1024))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$want_nofile" ]; then
  ulimit -Hn "$want_nofile" 2>/dev/null || true
fi
NOFILE=$(ulimit -Hn)
[ "$NOFILE" = unlimited ] || [ "$NOFILE" -gt "$want_nofile" ] && NOFILE=$want_nofile
ulimit -n "$NOFILE"
if [ "$NOFILE" -lt "$want_nofile" ]; then
  log "ulimit -n is $NOFILE (hard limit), below the $want_nofile HAProxy would like; it runs with 'no strict-limits'"
fi
[ "$NOFILE" -ge $((IDLE_CONNS + 1024)) ] || warn "ulimit -n $NOFILE is too low for $IDLE_CONNS idle connections"

BASE=${BENCH_PORT_BASE:-18100}
STABLE_PORT=$((BASE + 1)); CANARY_PORT=$((BASE + 2)); STABLE_H2=$((BASE + 3))
STABLE_STATUS=$((BASE + 4)); CANARY_STATUS=$((BASE + 5))
NGX_H1=$((BASE + 11)); NGX_H2=$((BASE + 12))
HAP_H1=$((BASE + 21)); HAP_H2=$((BASE + 22))
CND_PORT=$((BASE + 31)); CND_ADMIN=$((BASE + 32))
for p in $STABLE_PORT $CANARY_PORT $STABLE_H2 $STABLE_STATUS $CANARY_STATUS $NGX_H1 $NGX_H2 $HAP_H1 $HAP_H2 $CND_PORT $CND_ADMIN; do
  [ -z "$(ss -Htln "sport = :$p")" ] || die "port $p is in use; set BENCH_PORT_BASE to another base"
done

NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
if printf '%s\n%s\n' 1.25.1 "$NGINX_VERSION" | sort -V -C; then
  NGINX_NEW_H2=1
  NGINX_H2_NOTE="'http2 on' (>= 1.25.1) serves h2c with prior knowledge on a plain port"
else
  NGINX_NEW_H2=0
  NGINX_H2_NOTE="'listen ... http2' (< 1.25.1) on a plain port is h2c with prior knowledge only, so it gets its own port"
fi

TARGETS=(direct nginx)
[ "$HAVE_HAPROXY" = 1 ] && TARGETS+=(haproxy)
TARGETS+=(canaryd)

log "mode $MODE: $ROUNDS rounds x ${DURATION}s, work dir $WORK, load average $(cut -d' ' -f1-3 /proc/loadavg)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
start_backend backend-stable stable "$STABLE_PORT" "$STABLE_STATUS" "$(h2_listen "$STABLE_H2")"
start_backend backend-canary canary "$CANARY_PORT" "$CANARY_STATUS" ""
wait_ready backend-stable "http://127.0.0.1:$STABLE_PORT/"
wait_ready backend-canary "http://127.0.0.1:$CANARY_PORT/"
for t in "${TARGETS[@]}"; do is_proxy "$t" && start_proxy "$t"; done

# Sanity: every target answers 200 over HTTP/1.1 and h2c, through a backend that names itself.
for t in "${TARGETS[@]}"; do
  v=$(curl -fsS --max-time 2 -D - -o /dev/null -H "Cookie: uid=$FIXED_UID" "http://127.0.0.1:$(h1_port "$t")/" |
    tr -d '\r' | awk -F': ' 'tolower($1)=="x-variant" {print $2}')
  [ -n "$v" ] || die "$t: no X-Variant header in the response"
  if [ "$HAVE_H2LOAD" = 1 ]; then
    curl -fsS --max-time 2 --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$(h2_port "$t")/" ||
      die "$t: no h2c (prior knowledge) answer on port $(h2_port "$t")"
  fi
done
for t in "${TARGETS[@]}"; do
  is_proxy "$t" || continue
  AFFINITY[$t]="CPU list $(taskset -pc "${PID[$t]}" | sed 's/.*: //'), $(ls "/proc/${PID[$t]}/task" | wc -l) thread(s) in the main process, $(($(proc_tree "$t" | wc -l))) process(es)"
done 2>/dev/null || true

log "phase 1/4: throughput (HTTP/1.1 with wrk, h2c with h2load), CPU per request"
for ((r = 1; r <= ROUNDS; r++)); do
  log " round $r/$ROUNDS"
  for t in $(rotated "$r"); do
    phase_throughput "$r" "$t"
    [ "$HAVE_H2LOAD" = 1 ] && phase_h2 "$r" "$t"
  done
done

RATE=""
if [ "$HAVE_OHA" = 1 ]; then
  CAPACITY=$($PY "$HERE/report.py" capacity "$RESULTS")
  RATE=$(awk "BEGIN { printf \"%d\", $CAPACITY / 2 }")
  log "phase 2/4: latency with oha at $RATE req/s (50 % of the weakest proxy's $CAPACITY req/s)"
  for ((r = 1; r <= LAT_ROUNDS; r++)); do
    log " round $r/$LAT_ROUNDS"
    for t in $(rotated "$r"); do phase_latency "$r" "$t" "$RATE"; done
  done
else
  log "phase 2/4: latency skipped (no oha)"
fi

log "phase 3/4: RSS idle and per idle keep-alive connection ($IDLE_CONNS connections)"
for ((r = 1; r <= RSS_ROUNDS; r++)); do
  log " round $r/$RSS_ROUNDS"
  for t in $(rotated "$r"); do is_proxy "$t" && phase_rss "$r" "$t"; done
done

log "phase 4/4: canary share over $SHARE_REQUESTS new users, stickiness of $STICKY_USERS users"
for t in "${TARGETS[@]}"; do is_proxy "$t" && phase_share "$t"; done

# Errors the proxies logged (an access log is off, so this is only warnings and errors)
for t in "${TARGETS[@]}"; do
  is_proxy "$t" || continue
  for f in "$WORK/$t/out.log" "$WORK/$t/error.log"; do
    [ -s "$f" ] || continue
    n=$(grep -ciE 'error|warn|panic' "$f" || true)
    [ "$n" -gt 0 ] && warn "$t logged $n warning/error lines, e.g.: $(grep -iE -m1 'error|warn|panic' "$f" | cut -c1-200)"
  done
done

for t in "${TARGETS[@]}"; do is_proxy "$t" && stop_proc "$t"; done
stop_proc backend-stable
stop_proc backend-canary

# ---------------------------------------------------------------- report
END_EPOCH=$(date +%s)
if [ -z "$OUT" ]; then OUT=$(mktemp "${TMPDIR:-/tmp}/canaryd-compare-smoke.XXXXXX.md"); fi
ver() { "$@" 2>&1 | head -1 || true; }
{
  printf 'mode\t%s\n' "$MODE"
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'elapsed_s\t%s\n' "$((END_EPOCH - START_EPOCH))"
  printf 'kernel\t%s\n' "$(uname -sr)"
  printf 'lscpu\t%s\n' "$(lscpu | grep -E '^(Model name|Architecture|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|CPU max MHz|CPU MHz|L2 cache|L3 cache|Hypervisor vendor|Virtualization type):' | sed 's/  */ /g' | paste -sd ';')"
  printf 'memory\t%s\n' "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  printf 'load_before\t%s\n' "$LOAD_BEFORE"
  printf 'load_after\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'v_nginx\t%s\n' "$(ver nginx -v)"
  printf 'v_haproxy\t%s\n' "$([ "$HAVE_HAPROXY" = 1 ] && ver haproxy -v || echo 'not run')"
  printf 'v_wrk\t%s\n' "$(ver wrk -v | sed 's/ Copyright.*//')"
  printf 'v_h2load\t%s\n' "$([ "$HAVE_H2LOAD" = 1 ] && ver h2load --version || echo 'not run')"
  printf 'v_oha\t%s\n' "$([ "$HAVE_OHA" = 1 ] && ver oha --version || echo 'not run')"
  printf 'v_canaryd\t%s\n' "$(ver "$CANARYD_BIN" --version), rev $CANARYD_LABEL"
  printf 'v_python\t%s\n' "$(ver $PY --version)"
  printf 'rounds\t%s\n' "$ROUNDS"
  printf 'duration\t%s\n' "$DURATION"
  printf 'warmup\t%s\n' "$WARMUP"
  printf 'conns\t%s\n' "$CONNS"
  printf 'h2\t%s connections x %s streams\n' "$H2_CONNS" "$H2_STREAMS"
  printf 'idle_conns\t%s\n' "$IDLE_CONNS"
  printf 'rss_rounds\t%s\n' "$RSS_ROUNDS"
  printf 'lat_rounds\t%s\n' "${LAT_ROUNDS}"
  printf 'share_requests\t%s\n' "$SHARE_REQUESTS"
  printf 'sticky_users\t%s\n' "$STICKY_USERS"
  printf 'rate\t%s\n' "${RATE:-}"
  printf 'nginx_h2\t%s\n' "$NGINX_H2_NOTE"
  for t in "${!AFFINITY[@]}"; do printf 'pin_%s\t%s\n' "$t" "${AFFINITY[$t]}"; done
  for n in "${NOTES[@]}"; do printf 'note\t%s\n' "$n"; done
} >"$WORK/meta.tsv"
$PY "$HERE/report.py" render --results "$RESULTS" --meta "$WORK/meta.tsv" --commands "$CMDS" --work "$WORK" --out "$OUT"
cp "$RESULTS" "${OUT%.md}.jsonl"  # the raw per-round values, to re-render or compare runs
log "report: $OUT ($((END_EPOCH - START_EPOCH)) s)"
if [ "$HARD_FAILURES" -gt 0 ]; then
  die "$HARD_FAILURES measurement(s) produced no data (see the warnings above and the report)"
fi
