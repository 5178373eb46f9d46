#!/usr/bin/env bash
# benches/soak.sh: a long mixed-traffic run with faults (issue 6). Not run in CI.
#
# statuslens (default config plus a dead route) in front of an nginx upstream that
# answers 200/401/429/500/503, resets without answering (502, kind reset) or trickles
# a body at 1 KiB/s; wrk sends a weighted mix that also hits the dead route (502,
# connect refused) and paths no route takes (404), while a second client keeps asking
# for the trickling body and hanging up mid-body (499), and (H2=1, the default) h2load
# sends the same mix over h2c, which statuslens forwards over its fast-path pools
# (`src/fastclient.rs`). Every SAMPLE seconds it records
# statuslens' RSS and open file descriptors; at the end it checks that statuslens counted
# what wrk saw complete: never fewer (nothing lost), and no more than the responses in
# flight when wrk stopped (nothing double-counted).
#
# Usage: DURATION=1800 bash benches/soak.sh     (default 30 minutes; SAMPLE=10; CONNECTIONS=64;
#        H2=1 with H2_CONNECTIONS=8 H2_STREAMS=8: the h2c client; H2=0 leaves it out)
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-1800}
SAMPLE=${SAMPLE:-10}
CONNECTIONS=${CONNECTIONS:-64}
H2=${H2:-1}
H2_CONNECTIONS=${H2_CONNECTIONS:-8}
H2_STREAMS=${H2_STREAMS:-8}
BASE_PORT=${BASE_PORT:-18580}
prepare nginx wrk
if [ "$H2" = 1 ] && ! command -v h2load >/dev/null; then
    apt-get install -y -qq --no-install-recommends nghttp2-client
fi
workdir

P_UP=$BASE_PORT P_SL=$((BASE_PORT + 1)) P_ADMIN=$((BASE_PORT + 2)) P_DEAD=$((BASE_PORT + 3))
# Faults besides error codes: a reset without any answer (502, kind reset), and a body
# trickling at 1 KiB/s that a client gives up on (499).
upstream_nginx "$P_UP" '
        location /api/401 { return 401 "token expired"; }
        location /api/429 { add_header Retry-After 2 always; add_header X-RateLimit-Limit 1000 always; add_header X-RateLimit-Remaining 40 always; return 429 "slow down"; }
        location /api/500 { return 500 "boom"; }
        location /api/503 { return 503 "busy"; }
        location /api/reset { return 444; }
        location /api/trickle { limit_rate 1k; alias '"$WORK"'/up/www/16k; }'
head -c 16384 /dev/zero | tr '\0' 't' >"$WORK/up/www/16k"
chmod 644 "$WORK/up/www/16k"

cat >"$WORK/statuslens.toml" <<TOML
[proxy]
listen = "127.0.0.1:$P_SL"
[admin]
listen = "127.0.0.1:$P_ADMIN"
[[routes]]
name = "api"
match = { path_prefix = "/api/" }
upstream = "http://127.0.0.1:$P_UP"
[[routes]]
name = "dead"
match = { path_prefix = "/dead/" }
upstream = "http://127.0.0.1:$P_DEAD"
connect_timeout = "1s"
TOML
"$BIN" run --config "$WORK/statuslens.toml" >"$WORK/statuslens.log" 2>&1 &
SL=$!
PIDS+=("$SL")
wait_port "$P_UP"
wait_port "$P_SL"

cat >"$WORK/mix.lua" <<'LUA'
-- Weighted mix: mostly healthy, with 401s, 429s, 5xx, a dead route, an upstream that
-- resets without answering, and unmatched paths.
local paths = {}
local function add(p, n) for _ = 1, n do paths[#paths + 1] = p end end
add("/api/ok", 80) add("/api/401", 5) add("/api/429", 5) add("/api/500", 4)
add("/api/503", 3) add("/dead/x", 1) add("/nowhere", 2) add("/api/reset", 1)
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
LUA

rss() { awk '/VmRSS/ {print $2}' "/proc/$SL/status"; }
fds() { ls "/proc/$SL/fd" | wc -l; }
echo "| t (s) | RSS (KiB) | open fds |"
echo "|---:|---:|---:|"
wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s -s "$WORK/mix.lua" "http://127.0.0.1:$P_SL" >"$WORK/wrk.txt" &
WRK=$!
H2PID=""
if [ "$H2" = 1 ]; then
    # The same mix over h2c: h2load cycles through the URIs in turn.
    uris=()
    for _ in 1 2 3 4 5 6 7 8; do uris+=("http://127.0.0.1:$P_SL/api/ok"); done
    for p in /api/401 /api/429 /api/500 /api/503 /dead/x /nowhere /api/reset; do
        uris+=("http://127.0.0.1:$P_SL$p")
    done
    h2load -c "$H2_CONNECTIONS" -m "$H2_STREAMS" -D "$DURATION" "${uris[@]}" >"$WORK/h2load.txt" 2>&1 &
    H2PID=$!
fi
# Client aborts: another client asks for the trickling body ten times a second and
# hangs up once its first bytes have arrived; it keeps its own tally.
python3 - "$P_SL" "$DURATION" "$WORK/aborts" <<'PY' &
import socket, sys, time
port, duration, tally = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
end, n = time.time() + duration, 0
while time.time() < end:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /api/trickle HTTP/1.1\r\nHost: soak\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got or got.endswith(b"\r\n\r\n"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("statuslens closed an aborter connection")
        got += chunk
    s.close()
    n += 1
    open(tally, "w").write(str(n))
    time.sleep(0.1)
PY
ABORTER=$!
start=$(date +%s)
rss0="" fd0="" rssmax=0
while kill -0 "$WRK" 2>/dev/null; do
    t=$(($(date +%s) - start)); r=$(rss); f=$(fds)
    [ -n "$rss0" ] || { rss0=$r; fd0=$f; }
    [ "$r" -le "$rssmax" ] || rssmax=$r
    echo "| $t | $r | $f |"
    sleep "$SAMPLE"
done
wait "$WRK"
[ -z "$H2PID" ] || wait "$H2PID" || die "h2load failed: $(tail -n 5 "$WORK/h2load.txt")"
wait "$ABORTER" || die "the aborting client failed"
sleep 2 # let the last responses be counted
r=$(rss); f=$(fds)
echo "| end | $r | $f |"

sent=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
h2done=0 inflight=$CONNECTIONS
if [ -n "$H2PID" ]; then
    h2done=$(grep -oP 'requests: .*?\K\d+(?= done)' "$WORK/h2load.txt")
    inflight=$((CONNECTIONS + H2_CONNECTIONS * H2_STREAMS))
fi
metrics=$(curl -s "http://127.0.0.1:$P_ADMIN/metrics")
counted=$(echo "$metrics" | awk '/^statuslens_responses_total/ {s += $2} END {printf "%d", s}')
aborted=$(echo "$metrics" | awk '/^statuslens_responses_total.*code="499"/ {s += $2} END {printf "%d", s}')
refused=$(echo "$metrics" | awk '/^statuslens_client_errors_total/ {s += $2} END {printf "%d", s}')
echo
cat "$WORK/wrk.txt"
echo
[ -z "$H2PID" ] || { grep -E 'finished in|requests:|status codes:' "$WORK/h2load.txt"; echo; }
echo "completed by wrk:          $sent"
[ -z "$H2PID" ] || echo "completed by h2load (h2c): $h2done"
aborts=$(cat "$WORK/aborts")
echo "aborted by the client:     $aborts (hung up mid-body)"
echo "counted by statuslens:     $counted ($aborted of them 499: those aborts, and requests wrk cut off when it stopped)"
echo "RSS first/max/end (KiB):   $rss0 / $rssmax / $r"
echo "open fds first/end:        $fd0 / $f"
# The clients stop by closing their connections: a response statuslens finished writing
# just then is counted by statuslens but not by the client, at most one per connection
# (per stream over h2c). So statuslens may count up to that many more than the clients
# completed — never fewer (that would be a loss).
extra=$((counted - aborted - sent - h2done))
echo "counted beyond the clients' tally: $extra (responses in flight when they stopped; at most $inflight)"
[ "$extra" -ge 0 ] || die "statuslens counted fewer requests than the clients completed: $((-extra)) lost"
[ "$extra" -le "$inflight" ] || die "statuslens counted $extra more than the clients completed: double counting"
[ "$aborted" -ge "$aborts" ] || die "only $aborted of $aborts client aborts counted as 499"
[ "$aborted" -le $((aborts + inflight)) ] || die "$aborted 499s for $aborts aborts: double counting"
# Every client here sends whole, valid heads: a connection counted as refused before a
# request (malformed head, head timeout) would be statuslens misreading one.
echo "connections refused before a request: $refused"
[ "$refused" -eq 0 ] || die "$refused client connections counted as refused: $(echo "$metrics" | grep '^statuslens_client_errors_total')"
echo "requests lost: 0"
