#!/usr/bin/env bash
# benches/instructions.sh: user-space instructions per request, counted by callgrind.
#
# CPU time on a shared box moves by 10% between runs, so a change of 1-3% per request
# cannot be seen in req/s or CPU seconds. Instructions can: valgrind's callgrind counts
# every user-space instruction statuslens executes while a fixed load runs (the kernel is
# not counted), and the count per request repeats within about 0.5% (h1 and api, timed
# rather than counted runs, within 2%: idle work is shared by the requests served). Run it before and
# after a hot-path change (BIN=... for the other binary).
#
# statuslens runs `run --upstream` with its defaults (metrics, detection, JSON access log,
# written to a file) and one worker, in front of nginx `return 200 "ok"`. After a warm-up
# (pools filled, first-use series made), instrumentation is switched on for:
#   h1: wrk -t1 -c50 for DURATION seconds (the HTTP/1.1 fast path)
#   h2: h2load -c50 -m10 -n REQUESTS (h2c: hyper's HTTP/2 server and the fast pools)
#   api: as h1, with what an API client sends: a JWT bearer token, a user agent, Accept,
#        a tenant field, `Connection: keep-alive` and a two-parameter query (a ~1.2 KB
#        head; wrk's own 40-byte head hid a per-byte cost of 3.9k instructions here)
#   h2api: as h2, with that request's fields (`Connection` aside: HTTP/2 forbids it).
#        h2load, like nghttp2 everywhere, never indexes `authorization` in HPACK, so
#        the token arrives Huffman-coded in every request
# and the total is divided by the requests the client completed. valgrind slows the
# proxy some 50x, so these are far fewer requests than the benchmarks send.
#
# Usage: bash benches/instructions.sh          (all four kinds)
# Env:   KINDS ("h1 h2 api h2api") DURATION (8) REQUESTS (20000) PORT (18580; uses PORT..PORT+2)
#        BIN (default target/release/statuslens) SKIP_BUILD=1 TOP=n (also print the n
#        functions with the most inclusive instructions) KEEP=1 (keep the callgrind files)
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KINDS=${KINDS:-"h1 h2 api h2api"}
DURATION=${DURATION:-8}
REQUESTS=${REQUESTS:-20000}
PORT=${PORT:-18580}
TOP=${TOP:-0}

# callgrind_control and callgrind_annotate come with valgrind.
prepare nginx wrk valgrind
command -v h2load >/dev/null || apt-get install -y -qq --no-install-recommends nghttp2-client
[ -x "$BIN" ] || die "no binary at $BIN"
workdir
if [ "${KEEP:-0}" = 1 ]; then
    OUT=$(mktemp -d /tmp/statuslens-instructions-out.XXXXXX)
else
    OUT=$WORK
fi
UP=$PORT PROXY=$((PORT + 1)) ADMIN=$((PORT + 2))
upstream_nginx "$UP"
wait_port "$UP"

# shellcheck source=benches/api_client.sh
source "$(dirname "${BASH_SOURCE[0]}")/api_client.sh"

H2_HEAD=()
for ((i = 1; i < ${#API_HEAD[@]}; i += 2)); do
    [[ ${API_HEAD[i]} == Connection:* ]] || H2_HEAD+=(-H "${API_HEAD[i]}")
done

for kind in $KINDS; do
    file=$OUT/callgrind.$kind.out
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$file" \
        "$BIN" run --upstream "http://127.0.0.1:$UP" --listen "127.0.0.1:$PROXY" \
        --admin "127.0.0.1:$ADMIN" --workers 1 </dev/null >"$WORK/access.$kind.log" 2>"$WORK/valgrind.$kind.log" &
    vg=$!
    wait_port "$PROXY"
    # Warm-up, then the measured load with instrumentation on.
    case $kind in
        h1) wrk -t1 -c50 -d3s "http://127.0.0.1:$PROXY/" >/dev/null ;;
        h2) h2load -c50 -m10 -n 5000 "http://127.0.0.1:$PROXY/" >/dev/null ;;
        api) wrk -t1 -c50 -d3s "${API_HEAD[@]}" "http://127.0.0.1:$PROXY$API_PATH" >/dev/null ;;
        h2api) h2load -c50 -m10 -n 5000 "${H2_HEAD[@]}" "http://127.0.0.1:$PROXY$API_PATH" >/dev/null ;;
        *) die "unknown kind $kind (h1, h2, api, h2api)" ;;
    esac
    callgrind_control -i on "$vg" >/dev/null 2>&1
    case $kind in
        h1) out=$(wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:$PROXY/")
            n=$(awk '/requests in/{print $1}' <<<"$out") ;;
        h2) out=$(h2load -c50 -m10 -n "$REQUESTS" "http://127.0.0.1:$PROXY/")
            n=$(awk '/^requests:/{print $8}' <<<"$out") ;;
        api) out=$(wrk -t1 -c50 -d"${DURATION}s" "${API_HEAD[@]}" "http://127.0.0.1:$PROXY$API_PATH")
            n=$(awk '/requests in/{print $1}' <<<"$out") ;;
        h2api) out=$(h2load -c50 -m10 -n "$REQUESTS" "${H2_HEAD[@]}" "http://127.0.0.1:$PROXY$API_PATH")
            n=$(awk '/^requests:/{print $8}' <<<"$out") ;;
    esac
    callgrind_control -i off "$vg" >/dev/null 2>&1
    kill -INT "$vg"
    wait "$vg" || true
    total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
    [ -n "$total" ] && [ "${n:-0}" -gt 0 ] || die "$kind: no count (requests: ${n:-none}); see $WORK/valgrind.$kind.log"
    echo "$kind: $n requests, $((total / n)) user-space instructions per request"
    if [ "$TOP" -gt 0 ]; then
        callgrind_annotate --inclusive=yes "$file" 2>/dev/null \
            | grep -E '^ *[0-9,]+ \([ 0-9.]+%\)  \?\?\?:' | head -n "$TOP" | sed 's/^/  /'
    fi
done
[ "${KEEP:-0}" = 1 ] && echo "callgrind files in $OUT"
exit 0
