#!/usr/bin/env bash
# benches/h2front.sh: where statuslens' h2c cost per request goes, against haproxy.
#
# compare.sh shows statuslens behind haproxy over h2c only. This splits the cost: servers
# that answer h2c requests themselves, one per layer (examples/h2_responders.rs: a
# hand-rolled frame-splitting floor, the h2 crate, hyper's HTTP/2 server), haproxy
# answering itself (`http-request return`), statuslens answering itself (a 404: no route
# takes `/`, so routing, counting, detection and the access log run, no upstream), and
# both proxies forwarding to the same nginx. Same h2load settings for all, interleaved
# (A B C … A B C …), one thread/worker each; per target the median over the rounds of
# req/s and of user and system CPU µs per request of the server process (/proc).
#
#   ROUNDS=5 DURATION=4 bash benches/h2front.sh
#
# Not run in CI (a benchmark: its numbers are for README, not assertions).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-4}
CONNECTIONS=${CONNECTIONS:-50}
STREAMS=${STREAMS:-10}
UP=18480 FLOOR=18481 H2=18482 HYPER=18483 HAP_RET=18484 SL_404=18485 SL=18486 HAP=18487

prepare nginx haproxy
command -v h2load >/dev/null || apt-get install -y -qq --no-install-recommends nghttp2-client
(cd "$ROOT" && cargo build --release -q --example h2_responders)
workdir
upstream_nginx "$UP"
EXAMPLE=$ROOT/target/release/examples/h2_responders
for t in "floor $FLOOR" "h2 $H2" "hyper $HYPER"; do
    set -- $t
    "$EXAMPLE" "$1" "$2" &
    PIDS+=($!)
done
cat >"$WORK/haproxy.cfg" <<HAP
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
frontend answers
    bind 127.0.0.1:$HAP_RET proto h2
    http-request return status 200 content-type text/plain string ok hdr server nginx/1.22.1 hdr date "Thu, 26 Nov 2026 21:00:00 GMT"
frontend proxy
    bind 127.0.0.1:$HAP proto h2
    default_backend up
backend up
    server up 127.0.0.1:$UP
HAP
haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 &
PIDS+=($!)
HAP_PID=$!
cat >"$WORK/sl404.toml" <<TOML
[proxy]
listen = "127.0.0.1:$SL_404"
workers = 1
[admin]
listen = "127.0.0.1:0"
[[routes]]
name = "api"
match = { path_prefix = "/api/" }
upstream = "http://127.0.0.1:$UP"
TOML
"$BIN" run --config "$WORK/sl404.toml" >"$WORK/sl404.log" 2>&1 &
PIDS+=($!)
"$BIN" run --upstream "http://127.0.0.1:$UP" --workers 1 --listen "127.0.0.1:$SL" \
    --admin 127.0.0.1:0 >"$WORK/sl.log" 2>&1 &
PIDS+=($!)

TARGETS=("floor $FLOOR" "h2 $H2" "hyper $HYPER" "haproxy-answers $HAP_RET"
    "statuslens-404 $SL_404" "haproxy $HAP" "statuslens $SL")
pid_of() { # port
    if [ "$1" = "$HAP_RET" ] || [ "$1" = "$HAP" ]; then echo "$HAP_PID"; return; fi
    ss -ltnpH "sport = :$1" | grep -oP 'pid=\K\d+' | head -n1
}
for t in "${TARGETS[@]}"; do
    set -- $t
    wait_port "$2"
    out=$(h2load -n 20 -c 1 "http://127.0.0.1:$2/" 2>&1 || true)
    grep -q "20 done" <<<"$out" || die "$1 did not answer h2c: $out"
done

RESULTS=$WORK/results
for round in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        set -- $t
        pid=$(pid_of "$2")
        read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
        out=$(h2load -c "$CONNECTIONS" -m "$STREAMS" -D "$DURATION" "http://127.0.0.1:$2/" 2>&1)
        read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
        n=$(grep -oP 'requests: \d+ total, \d+ started, \K\d+(?= done)' <<<"$out")
        rps=$(grep -oP 'finished in [\d.]+s, \K[\d.]+(?= req/s)' <<<"$out")
        tick=$(getconf CLK_TCK)
        echo "$1 $rps $(echo "($u1-$u0)*1000000/$tick/$n" | bc -l) $(echo "($s1-$s0)*1000000/$tick/$n" | bc -l)" >>"$RESULTS"
        echo "round $round $1: $rps req/s" >&2
    done
done

echo
echo "h2load -c $CONNECTIONS -m $STREAMS -D $DURATION, $ROUNDS interleaved rounds, medians"
echo "(haproxy's two frontends share one process: its CPU is read while only one is loaded)"
echo
echo "| h2c target | req/s | user µs/req | sys µs/req | CPU µs/req |"
echo "|---|---:|---:|---:|---:|"
for t in "${TARGETS[@]}"; do
    set -- $t
    awk -v n="$1" '$1 == n' "$RESULTS" | python3 -c '
import sys, statistics as st
rows = [list(map(float, l.split()[1:])) for l in sys.stdin]
m = [st.median(c) for c in zip(*rows)]
print(f"| {sys.argv[1]} | {m[0]:.0f} | {m[1]:.2f} | {m[2]:.2f} | {st.median(r[1] + r[2] for r in rows):.2f} |")
' "$1"
done
