#!/usr/bin/env bash
# benches/compare.sh: statuslens against nginx and haproxy (issue 5).
#
# In one run, on loopback, with the same upstream (nginx `return 200 "ok"`, plus 1 KiB and
# 64 KiB static bodies, keepalive_requests raised) and the same client settings, this
# measures interleaved (A B C D E A B C D E ...):
#   direct (client -> upstream, the limit), nginx (reverse proxy, upstream keepalive),
#   haproxy (http-reuse always), statuslens (default config: metrics, detection and JSON
#   access log all on, log written to a file), each proxy with ONE worker/thread, plus
#   statuslens with its default worker count (one per core), labelled as such; and nginx
#   and haproxy again with a JSON access log line for every request (nginx's buffered to
#   a file, like statuslens' own; haproxy's into an in-memory ring, its cheapest log
#   target), the like-for-like comparisons for statuslens' default of logging every
#   request.
# Per target: req/s, p50, p99, p99.9, CPU seconds per request of the proxy process
# (utime+stime from /proc, nginx: master+worker), peak RSS sampled during the run
# (nginx: the worker). Also HTTP/2 (h2c prior knowledge, h2load) and RSS while holding
# BIG_CONNECTIONS (1,000) concurrent connections. The `api` body kind is the 2-byte body
# asked for as an API integration asks (benches/api_client.sh: a bearer token, a user
# agent, a query; a ~1.2 KB head instead of wrk's 40 bytes). Prints a markdown table of medians
# over rounds and ratios (medians of per-round ratios), and writes it to benches/results.md.
#
# Usage: bash benches/compare.sh            (defaults: ROUNDS=3 DURATION=8 CONNECTIONS=50)
# Env:   ROUNDS DURATION CONNECTIONS WRK_THREADS H2_CONNECTIONS H2_STREAMS BIG_CONNECTIONS
#        WARMUP BODIES ("small 1k 64k api") BASE_PORT (18480; uses BASE_PORT..BASE_PORT+13)
#        SL_DEFAULT_THREADS (1: also run statuslens with its default workers; 0: skip)
#        NGINX_LOG (1: also run nginx with a JSON access log; 0: skip)
#        HAPROXY_LOG (1: also run haproxy with a JSON access log; 0: skip)
#        RESULTS (output file; default benches/results.md) KEEP=1 (keep the temp dir)
#        SKIP_BUILD=1 (use the existing target/release/statuslens)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-50}
WRK_THREADS=${WRK_THREADS:-1}
H2_CONNECTIONS=${H2_CONNECTIONS:-50}
H2_STREAMS=${H2_STREAMS:-10}
BIG_CONNECTIONS=${BIG_CONNECTIONS:-1000}
WARMUP=${WARMUP:-2}
BODIES=${BODIES:-"small 1k 64k api"}
BASE_PORT=${BASE_PORT:-18480}
SL_DEFAULT_THREADS=${SL_DEFAULT_THREADS:-1}
NGINX_LOG=${NGINX_LOG:-1}
HAPROXY_LOG=${HAPROXY_LOG:-1}
RESULTS=${RESULTS:-$ROOT/benches/results.md}
CMDLINE="SL_DEFAULT_THREADS=$SL_DEFAULT_THREADS NGINX_LOG=$NGINX_LOG HAPROXY_LOG=$HAPROXY_LOG ROUNDS=$ROUNDS DURATION=$DURATION CONNECTIONS=$CONNECTIONS bash benches/compare.sh"

# shellcheck source=benches/api_client.sh
source "$ROOT/benches/api_client.sh"

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- 1. dependencies, build
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
if ((${#need[@]})); then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    log "installing ${need[*]}"
    # Keep the packages' init scripts from starting system daemons (nothing may stay
    # running): a temporary policy-rc.d, only if the machine has none.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${need[@]}"
    [ "$made_policy" = 0 ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release)
fi
BIN=$ROOT/target/release/statuslens
[ -x "$BIN" ] || die "$BIN not built"
# What was built, taken now: sources edited while the run goes on are not in the binary.
BUILT_FROM="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + uncommitted changes in src/')"
command -v curl >/dev/null 2>&1 || die "curl is needed for the sanity checks"

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- 2. servers
WORK=$(mktemp -d /tmp/statuslens-bench.XXXXXX)
chmod 755 "$WORK" # nginx workers run as nobody and read the static bodies
PIDS=()    # everything we started, stopped at exit
SAMPLER="" # RSS sampler of the current run
cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    [ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

P_UP=$BASE_PORT P_UP_H2=$((BASE_PORT + 1))
P_NGX=$((BASE_PORT + 2)) P_NGX_H2=$((BASE_PORT + 3))
P_HAP=$((BASE_PORT + 4)) P_HAP_H2=$((BASE_PORT + 5))
P_SL1=$((BASE_PORT + 6)) P_SL1_ADMIN=$((BASE_PORT + 7))
P_SL2=$((BASE_PORT + 8)) P_SL2_ADMIN=$((BASE_PORT + 9))
P_NGL=$((BASE_PORT + 10)) P_NGL_H2=$((BASE_PORT + 11))
P_HPL=$((BASE_PORT + 12)) P_HPL_H2=$((BASE_PORT + 13))

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $(seq "$BASE_PORT" $((BASE_PORT + 13))); do
    ! port_open "$p" || die "port $p is in use (set BASE_PORT)"
done
wait_port() { # port pid name
    local i
    for i in $(seq 200); do
        port_open "$1" && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited during start-up (see $WORK/$3)"
        sleep 0.05
    done
    die "$3 did not listen on $1"
}

nginx_common() { # dir
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 10000; }
EOF
}
nginx_http_common() { # dir
    cat <<EOF
    access_log off;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
EOF
}
start_nginx() { # name -> sets NGX_PID_<name>
    local d=$WORK/$1
    nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log" -g 'daemon off;' &
    local pid=$!
    PIDS+=("$pid")
    printf -v "PID_$1" '%s' "$pid"
}

# upstream: nginx, `return 200 "ok"`, 1 KiB and 64 KiB static files; h2c on a second port
d=$WORK/upstream
mkdir -p "$d/tmp" "$d/www"
head -c 1024 /dev/zero | tr '\0' 'a' >"$d/www/1k"
head -c 65536 /dev/zero | tr '\0' 'b' >"$d/www/64k"
chmod 755 "$d" "$d/www"
chmod 644 "$d/www/"*
{
    nginx_common "$d"
    cat <<EOF
http {
$(nginx_http_common "$d")
    default_type application/octet-stream;
    open_file_cache max=16 inactive=600s;
    server {
        listen 127.0.0.1:$P_UP backlog=4096;
        listen 127.0.0.1:$P_UP_H2 http2 backlog=4096;
        root $d/www;
        location / { return 200 "ok"; }
        location = /1k { }
        location = /64k { }
    }
}
EOF
} >"$d/nginx.conf"
start_nginx upstream

# nginx as reverse proxy (upstream keepalive), h2c prior knowledge on a second port;
# nginx_proxy name port h2port extra-http-lines extra-server-lines
nginx_proxy() {
    local d=$WORK/$1
    mkdir -p "$d/tmp"
    {
        nginx_common "$d"
        cat <<EOF
http {
$(nginx_http_common "$d")
$4
    upstream up {
        server 127.0.0.1:$P_UP;
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$2 backlog=4096;
        listen 127.0.0.1:$3 http2 backlog=4096;
$5
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$d/nginx.conf"
    start_nginx "$1"
}
nginx_proxy nginx "$P_NGX" "$P_NGX_H2" "" ""
# the same, logging every request as a JSON line with the fields statuslens' line
# carries, buffered 64 KiB as statuslens batches its lines (in the server block: an
# "access_log off" cancels every access_log of its own level, here http)
NGINX_JSON='{"time":"$time_iso8601","method":"$request_method","uri":"$request_uri","status":$status,"duration_s":$request_time,"bytes_out":$body_bytes_sent,"upstream":"$upstream_addr","upstream_status":"$upstream_status","client":"$remote_addr","request_id":"$request_id"}'
if [ "$NGINX_LOG" = 1 ]; then
    nginx_proxy nginxlog "$P_NGL" "$P_NGL_H2" "    log_format json escape=json '$NGINX_JSON';" \
        "        access_log $WORK/nginxlog/access.log json buffer=64k flush=1s;"
fi

# haproxy, one thread, http-reuse always; h2c prior knowledge on a second bind;
# haproxy_proxy name port h2port extra-top-level-lines extra-defaults-lines
haproxy_proxy() {
    local d=$WORK/$1
    mkdir -p "$d"
    cat >"$d/haproxy.cfg" <<EOF
$4
global
    nbthread 1
    maxconn 5000
defaults
    mode http
    maxconn 5000
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always
$5
frontend fe
    bind 127.0.0.1:$2
    bind 127.0.0.1:$3 proto h2
    default_backend be
backend be
    server up 127.0.0.1:$P_UP
EOF
    haproxy -db -f "$d/haproxy.cfg" >"$d/haproxy.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    printf -v "PID_$1" '%s' "$pid"
}
haproxy_proxy haproxy "$P_HAP" "$P_HAP_H2" "" ""
# the same, logging every request as a JSON line with the fields nginxlog's line carries
# (string fields escaped: +E) into a 4 MiB in-memory ring, haproxy's cheapest log target:
# no syscall per line and no file at all, so if anything this favours haproxy
HAPROXY_JSON='{"time":"%tr","method":"%HM","uri":"%{+E}HU","status":%ST,"duration_ms":%Ta,"bytes_out":%B,"upstream":"%si:%sp","client":"%ci","request_id":"%ID"}'
if [ "$HAPROXY_LOG" = 1 ]; then
    haproxy_proxy haproxylog "$P_HPL" "$P_HPL_H2" "ring access
    format raw
    maxlen 2048
    size 4194304" "    log ring@access local0
    unique-id-format %{+X}o%ci:%cp_%fi:%fp_%Ts_%rt
    log-format '$HAPROXY_JSON'"
fi

# statuslens, default behaviour (zero-config; metrics, detection, JSON access log on),
# access log appended to a file (O_APPEND, so it can be truncated between runs).
start_statuslens() { # name port admin threads("" = runtime default)
    local d=$WORK/$1
    mkdir -p "$d"
    : >"$d/access.log"
    local workers=()
    [ -z "$4" ] || workers=(--workers "$4")
    "$BIN" run --upstream "http://127.0.0.1:$P_UP" "${workers[@]}" \
        --listen "127.0.0.1:$2" --admin "127.0.0.1:$3" >>"$d/access.log" 2>"$d/stderr.log" &
    local pid=$!
    PIDS+=("$pid")
    printf -v "PID_$1" '%s' "$pid"
}
start_statuslens sl1 "$P_SL1" "$P_SL1_ADMIN" 1
[ "$SL_DEFAULT_THREADS" = 0 ] || start_statuslens sl2 "$P_SL2" "$P_SL2_ADMIN" ""

wait_port "$P_UP" "$PID_upstream" upstream
wait_port "$P_UP_H2" "$PID_upstream" upstream
wait_port "$P_NGX" "$PID_nginx" nginx
[ "$NGINX_LOG" = 0 ] || wait_port "$P_NGL" "$PID_nginxlog" nginxlog
wait_port "$P_HAP" "$PID_haproxy" haproxy
[ "$HAPROXY_LOG" = 0 ] || wait_port "$P_HPL" "$PID_haproxylog" haproxylog
wait_port "$P_SL1" "$PID_sl1" sl1
wait_port "$P_SL1_ADMIN" "$PID_sl1" sl1
if [ "$SL_DEFAULT_THREADS" != 0 ]; then
    wait_port "$P_SL2" "$PID_sl2" sl2
    wait_port "$P_SL2_ADMIN" "$PID_sl2" sl2
fi
# nginx workers: RSS is the worker's; CPU is master + worker
NGINX_NAMES=(upstream nginx)
[ "$NGINX_LOG" = 0 ] || NGINX_NAMES+=(nginxlog)
for n in "${NGINX_NAMES[@]}"; do
    pid_var=PID_$n
    w=""
    for i in $(seq 100); do
        w=$(pgrep -P "${!pid_var}" | head -n1 || true)
        [ -n "$w" ] && break
        sleep 0.05
    done
    [ -n "$w" ] || die "no nginx worker for $n"
    PIDS+=("$w")
    printf -v "WORKER_$n" '%s' "$w"
done

# ---------------------------------------------------------------- targets
TARGETS=(direct nginx)
[ "$NGINX_LOG" = 0 ] || TARGETS+=(nginxlog)
TARGETS+=(haproxy)
[ "$HAPROXY_LOG" = 0 ] || TARGETS+=(haproxylog)
TARGETS+=(sl1)
[ "$SL_DEFAULT_THREADS" = 0 ] || TARGETS+=(sl2)
nworkers() { # proxy worker threads of a pid
    grep -lE '^statuslens-w[0-9]+$' /proc/"$1"/task/*/comm 2>/dev/null | wc -l
}
SL1_WORKERS=$(nworkers "$PID_sl1")
[ "$SL_DEFAULT_THREADS" = 0 ] || SL2_WORKERS=$(nworkers "$PID_sl2")
[ "$SL1_WORKERS" = 1 ] || die "--workers 1 not honoured: $SL1_WORKERS proxy workers"
label() {
    case $1 in
    direct) echo "direct (upstream, no proxy)" ;;
    nginx) echo "nginx $(nginx -v 2>&1 | sed 's|.*/||') (1 worker)" ;;
    nginxlog) echo "nginx, JSON access log on (1 worker)" ;;
    haproxy) echo "haproxy $(haproxy -v | awk 'NR==1{print $3}' | sed 's/-.*//') (nbthread 1)" ;;
    haproxylog) echo "haproxy, JSON access log on (nbthread 1)" ;;
    sl1) echo "**statuslens** (1 worker)" ;;
    sl2) echo "statuslens (default: $SL2_WORKERS workers)" ;;
    esac
}
port_of() { # target proto
    case $1:$2 in
    direct:h1) echo "$P_UP" ;; direct:h2) echo "$P_UP_H2" ;;
    nginx:h1) echo "$P_NGX" ;; nginx:h2) echo "$P_NGX_H2" ;;
    nginxlog:h1) echo "$P_NGL" ;; nginxlog:h2) echo "$P_NGL_H2" ;;
    haproxy:h1) echo "$P_HAP" ;; haproxy:h2) echo "$P_HAP_H2" ;;
    haproxylog:h1) echo "$P_HPL" ;; haproxylog:h2) echo "$P_HPL_H2" ;;
    sl1:*) echo "$P_SL1" ;; sl2:*) echo "$P_SL2" ;;
    esac
}
cpu_pids() {
    case $1 in
    direct) ;;
    nginx) echo "$PID_nginx $WORKER_nginx" ;;
    nginxlog) echo "$PID_nginxlog $WORKER_nginxlog" ;;
    haproxy) echo "$PID_haproxy" ;;
    haproxylog) echo "$PID_haproxylog" ;;
    sl1) echo "$PID_sl1" ;; sl2) echo "$PID_sl2" ;;
    esac
}
rss_pid() {
    case $1 in
    direct) ;;
    nginx) echo "$WORKER_nginx" ;;
    nginxlog) echo "$WORKER_nginxlog" ;;
    *) cpu_pids "$1" ;;
    esac
}
path_of() { case $1 in small) echo / ;; 1k) echo /1k ;; 64k) echo /64k ;; api) echo "$API_PATH" ;; esac; }
size_of() { case $1 in small | api) echo 2 ;; 1k) echo 1024 ;; 64k) echo 65536 ;; esac; }
head_of() { [ "$1" = api ] && printf '%s\n' "${API_HEAD[@]}"; true; } # wrk's -H arguments, one a line

# sanity: every target answers 200 with the right body size, over h1 and h2c
for t in "${TARGETS[@]}"; do
    for b in $BODIES; do
        mapfile -t hdr < <(head_of "$b")
        got=$(curl -sS -o /dev/null -w '%{http_code} %{size_download}' "${hdr[@]}" "http://127.0.0.1:$(port_of "$t" h1)$(path_of "$b")")
        [ "$got" = "200 $(size_of "$b")" ] || die "$t $b: got '$got'"
    done
    out=$(h2load -n 20 -c 1 "http://127.0.0.1:$(port_of "$t" h2)/" 2>&1 || true)
    grep -q '20 succeeded' <<<"$out" || die "$t h2c check failed: $out"
done

cpu_ticks() { # pids... -> utime+stime in ticks
    local t=0 pid s f
    for pid in "$@"; do
        s=$(<"/proc/$pid/stat")
        s=${s##*) }
        read -r -a f <<<"$s"
        t=$((t + f[11] + f[12]))
    done
    echo "$t"
}
rss_sampler() { # pid outfile: max VmRSS (KiB) seen, every 0.2 s, until killed
    local max=0 k v _
    while :; do
        while read -r k v _; do [ "$k" = VmRSS: ] && break; done <"/proc/$1/status"
        ((v > max)) && max=$v && echo "$max" >"$2"
        sleep 0.2
    done
}

cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

TSV=$WORK/results.tsv # proto body target round rps p50 p99 p999 cpu_us_per_req rss_kib errors requests
: >"$TSV"
LOGLINES_sl1=0 LOGLINES_sl2=0

# one measured run: proto(h1|h2|big) body target round
measure() {
    local proto=$1 body=$2 t=$3 round=$4 port path out c0 c1 rss=0 rfile
    local -a cp hdr
    mapfile -t hdr < <(head_of "$body")
    port=$(port_of "$t" "${proto/big/h1}")
    path=$(path_of "$body")
    read -r -a cp <<<"$(cpu_pids "$t")"
    rfile=$WORK/rss.$proto.$body.$t.$round
    echo 0 >"$rfile"
    if [ -n "$(rss_pid "$t")" ]; then
        rss_sampler "$(rss_pid "$t")" "$rfile" &
        SAMPLER=$!
    fi
    c0=$( ((${#cp[@]})) && cpu_ticks "${cp[@]}" || echo 0)
    case $proto in
    h1 | big)
        local conns=$CONNECTIONS
        [ "$proto" = big ] && conns=$BIG_CONNECTIONS
        out=$(wrk -t"$WRK_THREADS" -c"$conns" -d"${DURATION}s" -s "$WORK/report.lua" "${hdr[@]}" "http://127.0.0.1:$port$path" 2>&1)
        ;;
    h2)
        out=$(h2load -c "$H2_CONNECTIONS" -m "$H2_STREAMS" -D "$DURATION" "http://127.0.0.1:$port$path" 2>&1)
        ;;
    esac
    c1=$( ((${#cp[@]})) && cpu_ticks "${cp[@]}" || echo 0)
    if [ -n "$SAMPLER" ]; then
        kill "$SAMPLER" 2>/dev/null || true
        wait "$SAMPLER" 2>/dev/null || true
        SAMPLER=""
    fi
    rss=$(<"$rfile")
    printf '%s\n' "$out" >"$WORK/out.$proto.$body.$t.$round"
    local reqs dur_us p50 p99 p999 errs non2xx rps cpu
    if [ "$proto" = h2 ]; then
        # h2load: no percentiles; p50 column carries the mean, p99/p99.9 are "-"
        read -r reqs errs <<<"$(awk '/^requests:/{s=$8; f=$10+$12+$14} END{print s+0, f+0}' <<<"$out")"
        rps=$(awk '/^finished in/{gsub(",","",$4); printf "%.0f", $4}' <<<"$out")
        p50=$(awk '/^time for request:/{v=$6; u=v; sub(/[0-9.]+/,"",u); sub(/[a-z]+$/,"",v);
              m=(u=="us")?1:(u=="ms")?1000:1000000; printf "%d", v*m}' <<<"$out")
        p99=- p999=- non2xx=0
    else
        read -r reqs dur_us p50 p99 p999 errs non2xx <<<"$(awk '/^RESULT/{print $2,$3,$4,$5,$6,$7,$8}' <<<"$out")"
        [ -n "${reqs:-}" ] || die "wrk output unparsable: $out"
        rps=$(awk -v r="$reqs" -v d="$dur_us" 'BEGIN{printf "%.0f", r/(d/1e6)}')
        errs=$((errs + non2xx))
    fi
    [ "${reqs:-0}" -gt 0 ] || die "$t $proto $body: no requests: $out"
    if ((${#cp[@]})); then
        cpu=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v r="$reqs" 'BEGIN{printf "%.2f", d/hz*1e6/r}')
    else
        cpu=- rss=-
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proto" "$body" "$t" "$round" \
        "$rps" "$p50" "$p99" "$p999" "$cpu" "$rss" "$errs" "$reqs" >>"$TSV"
    log "$(printf '%-4s %-5s %-8s r%s  %8s req/s  p50 %6s us  p99 %6s us  p99.9 %6s us  cpu %6s us/req  rss %6s KiB  errors %s' \
        "$proto" "$body" "$t" "$round" "$rps" "$p50" "$p99" "$p999" "$cpu" "$rss" "$errs")"
    # keep the access log from filling the disk; count its lines for the sanity check
    case $t in
    sl1 | sl2)
        local n lv=LOGLINES_$t
        n=$(wc -l <"$WORK/$t/access.log")
        printf -v "$lv" '%s' $((${!lv} + n))
        : >"$WORK/$t/access.log"
        ;;
    nginxlog) : >"$WORK/nginxlog/access.log" ;;
    esac
}

# warm-up (connections, pools, caches); not recorded
log "warm-up ${WARMUP}s per target"
for t in "${TARGETS[@]}"; do
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "http://127.0.0.1:$(port_of "$t" h1)/" >/dev/null
done

# ---------------------------------------------------------------- 3. interleaved runs
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "targets: ${TARGETS[*]}; $ROUNDS rounds x ${DURATION}s; wrk -t$WRK_THREADS -c$CONNECTIONS; h2load -c$H2_CONNECTIONS -m$H2_STREAMS"
for r in $(seq "$ROUNDS"); do
    for b in $BODIES; do
        for t in "${TARGETS[@]}"; do measure h1 "$b" "$t" "$r"; done
    done
    for t in "${TARGETS[@]}"; do measure h2 small "$t" "$r"; done
done
# RSS while holding BIG_CONNECTIONS concurrent connections (one run each, proxies only)
for t in "${TARGETS[@]}"; do
    [ "$t" = direct ] || measure big small "$t" 1
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- sanity: counted + logged
metric_total() { # admin port -> sum of statuslens_responses_total
    curl -sS "http://127.0.0.1:$1/metrics" | awk '/^statuslens_responses_total\{/{s+=$NF} END{printf "%.0f", s}'
}
SANITY=""
for t in sl1 sl2; do
    [[ " ${TARGETS[*]} " == *" $t "* ]] || continue
    ap=$P_SL1_ADMIN
    [ "$t" = sl2 ] && ap=$P_SL2_ADMIN
    sent=$(awk -F'\t' -v t="$t" '$3==t{s+=$12} END{printf "%.0f", s}' "$TSV")
    lv=LOGLINES_$t
    SANITY+="- $(label "$t" | tr -d '*'): requests completed by the clients in measured runs $sent;"
    SANITY+=" statuslens_responses_total $(metric_total "$ap") (includes warm-up/checks);"
    SANITY+=" JSON access-log lines written ${!lv} (warm-up included; counted and truncated after each run, so a line being written at that moment can be missed)."$'\n'
done

# ---------------------------------------------------------------- 4./5. tables
median() { # values... (ignores "-")
    printf '%s\n' "$@" | { grep -v '^-$' || true; } | sort -g | awk '{a[NR]=$1} END{
        if (NR==0) {print "-"; exit}
        m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2
        if (m == int(m)) printf "%d\n", m; else printf "%.2f\n", m }'
}
col() { # proto body target column -> values over rounds
    awk -F'\t' -v p="$1" -v b="$2" -v t="$3" -v c="$4" '$1==p && $2==b && $3==t {print $c}' "$TSV"
}
ratio() { # proto body targetA targetB column -> median over rounds of A/B
    local vals
    vals=$(awk -F'\t' -v p="$1" -v b="$2" -v a="$3" -v o="$4" -v c="$5" '
        $1==p && $2==b && $3==a {x[$4]=$c}
        $1==p && $2==b && $3==o {y[$4]=$c}
        END {for (r in x) if ((r in y) && x[r]!="-" && y[r]!="-" && y[r]>0) printf "%.6f\n", x[r]/y[r]}' "$TSV")
    [ -n "$vals" ] || { echo "-"; return; }
    # shellcheck disable=SC2086
    median $vals | awk '{ if ($1=="-") print "-"; else printf "%.2f×\n", $1 }'
}
mib() { [ "$1" = - ] && echo - || awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }

table() { # proto body title
    local t
    echo "### $3"
    echo
    if [ "$1" = h2 ]; then
        echo "| target | req/s | mean latency µs | CPU µs/req (proxy) | RSS MiB (peak) | errors |"
        echo "|---|---:|---:|---:|---:|---:|"
    else
        echo "| target | req/s | p50 µs | p99 µs | p99.9 µs | CPU µs/req (proxy) | RSS MiB (peak) | errors |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    fi
    for t in "${TARGETS[@]}"; do
        [ -n "$(col "$1" "$2" "$t" 5)" ] || continue
        local rps p50 p99 p999 cpu rss errs
        # shellcheck disable=SC2046
        rps=$(median $(col "$1" "$2" "$t" 5)) p50=$(median $(col "$1" "$2" "$t" 6))
        # shellcheck disable=SC2046
        p99=$(median $(col "$1" "$2" "$t" 7)) p999=$(median $(col "$1" "$2" "$t" 8))
        # shellcheck disable=SC2046
        cpu=$(median $(col "$1" "$2" "$t" 9)) rss=$(mib "$(col "$1" "$2" "$t" 10 | sort -g | tail -n1)")
        errs=$(col "$1" "$2" "$t" 11 | awk '{s+=$1} END{print s+0}')
        if [ "$1" = h2 ]; then
            echo "| $(label "$t") | $rps | $p50 | $cpu | $rss | $errs |"
        else
            echo "| $(label "$t") | $rps | $p50 | $p99 | $p999 | $cpu | $rss | $errs |"
        fi
    done
    echo
}
ratios() { # proto body
    local sl lat=7
    [ "$1" = h2 ] && lat=6
    echo "| ratio (median of per-round ratios) | throughput | $([ "$1" = h2 ] && echo "mean latency" || echo p99) | CPU/req |"
    echo "|---|---:|---:|---:|"
    for sl in sl1 sl2; do
        [[ " ${TARGETS[*]} " == *" $sl "* ]] || continue
        local name="statuslens (1 worker)"
        [ "$sl" = sl2 ] && name="statuslens (default, ${SL2_WORKERS:-?} workers)"
        echo "| $name / nginx | $(ratio "$1" "$2" "$sl" nginx 5) | $(ratio "$1" "$2" "$sl" nginx $lat) | $(ratio "$1" "$2" "$sl" nginx 9) |"
        [ "$NGINX_LOG" = 0 ] ||
            echo "| $name / nginx with access log | $(ratio "$1" "$2" "$sl" nginxlog 5) | $(ratio "$1" "$2" "$sl" nginxlog $lat) | $(ratio "$1" "$2" "$sl" nginxlog 9) |"
        echo "| $name / haproxy | $(ratio "$1" "$2" "$sl" haproxy 5) | $(ratio "$1" "$2" "$sl" haproxy $lat) | $(ratio "$1" "$2" "$sl" haproxy 9) |"
        [ "$HAPROXY_LOG" = 0 ] ||
            echo "| $name / haproxy with access log | $(ratio "$1" "$2" "$sl" haproxylog 5) | $(ratio "$1" "$2" "$sl" haproxylog $lat) | $(ratio "$1" "$2" "$sl" haproxylog 9) |"
        echo "| $name / direct | $(ratio "$1" "$2" "$sl" direct 5) | $(ratio "$1" "$2" "$sl" direct $lat) | - |"
    done
    echo
}

REPORT=$WORK/report.md
{
    echo "# statuslens benchmark: results"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); statuslens $BUILT_FROM"
    echo "- command: \`$CMDLINE\`"
    echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo), $(uname -sr); client, proxies and upstream share the CPUs (no pinning)"
    echo "- versions: $(nginx -v 2>&1), $(haproxy -v | head -n1 | awk '{print $1, $2, $3}'), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}'), $(h2load --version 2>&1 | head -n1)"
    echo "- clients: \`wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s\` (p99.9 from a wrk Lua \`done()\`); HTTP/2: \`h2load -c $H2_CONNECTIONS -m $H2_STREAMS -D $DURATION\` (h2c prior knowledge; h2load reports no percentiles, so mean); $ROUNDS rounds, targets interleaved per round, medians shown"
    echo "- upstream: nginx, 1 worker, \`return 200 \"ok\"\` / static 1 KiB / 64 KiB, keepalive_requests 1000000, access_log off"
    echo "- proxies, 1 worker each: nginx (proxy_http_version 1.1, upstream keepalive 128, access_log off$([ "$NGINX_LOG" = 0 ] || echo "; and again with a JSON access log line per request, buffer=64k flush=1s")), haproxy (nbthread 1, http-reuse always, no logging$([ "$HAPROXY_LOG" = 0 ] || echo "; and again with a JSON access log line per request into a 4 MiB in-memory ring")), statuslens \`run --upstream\` defaults (metrics + spike detection + JSON access log to a file) with \`--workers 1\` (verified: $SL1_WORKERS proxy worker thread)$([ "$SL_DEFAULT_THREADS" = 0 ] || echo "; also statuslens with its default, $SL2_WORKERS workers (not a like-for-like comparison: 2 workers vs 1)")"
    echo "- load average (1/5/15 min) before the measured runs: $LOAD_BEFORE, after: $LOAD_AFTER (the benchmark itself keeps about 2 busy; more means other work shared the machine)"
    echo "- CPU µs/req: utime+stime of the proxy process(es) from /proc over the run ÷ requests (nginx: master+worker); RSS: peak VmRSS sampled every 0.2 s during the run (nginx: worker)"
    echo
    echo "## HTTP/1.1, wrk -c$CONNECTIONS"
    echo
    for b in $BODIES; do
        case $b in
        small) title="2-byte body (\`return 200 \"ok\"\`)" ;;
        1k) title="1 KiB body" ;;
        64k) title="64 KiB body" ;;
        api) title="2-byte body, an API client's request (benches/api_client.sh: bearer token, user agent, query; ~1.2 KB head)" ;;
        esac
        table h1 "$b" "$title"
        ratios h1 "$b"
    done
    echo "## HTTP/2 (h2c prior knowledge), 2-byte body"
    echo
    table h2 small "h2load -c $H2_CONNECTIONS -m $H2_STREAMS (direct = upstream nginx h2c; proxies forward as HTTP/1.1)"
    ratios h2 small
    echo "## $BIG_CONNECTIONS concurrent connections (wrk -c$BIG_CONNECTIONS, one ${DURATION}s run, 2-byte body)"
    echo
    table big small "peak RSS while holding $BIG_CONNECTIONS connections"
    echo "## Sanity"
    echo
    printf '%s' "$SANITY"
    echo
    echo "<details><summary>raw rows (proto body target round req/s p50/mean_µs p99_µs p99.9_µs cpu_µs/req rss_KiB errors requests)</summary>"
    echo
    echo '```'
    cat "$TSV"
    echo '```'
    echo
    echo "</details>"
} >"$REPORT"

cat "$REPORT"
cp "$REPORT" "$RESULTS"
log "written $RESULTS"
