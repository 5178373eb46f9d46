#!/usr/bin/env bash
# benches/scale.sh: does statuslens' cost grow with its configuration? (issue 5)
#
# Two statuslens processes (release build, default config otherwise, 1 worker each) in
# front of the same nginx upstream: one with 1 route, one with 1,001 routes (1,000
# decoys with distinct first path segments and hosts, then the route the traffic
# takes). wrk drives each with either one path or 100,000 distinct paths (a Lua
# script either way, so the client costs the same). Four cells, interleaved per round;
# per cell the median over rounds of req/s and of the proxy's CPU µs per request, and
# the median per-round ratio of each cell to "1 route, 1 path". The goal: every ratio
# within 5% (on this shared 2-core box, run-to-run noise alone is a few percent).
#
# Usage: ROUNDS=5 DURATION=6 bash benches/scale.sh
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-6}
CONNECTIONS=${CONNECTIONS:-50}
BASE_PORT=${BASE_PORT:-18620}
prepare nginx wrk
workdir

P_UP=$BASE_PORT P_ONE=$((BASE_PORT + 1)) P_ONE_ADMIN=$((BASE_PORT + 2))
P_MANY=$((BASE_PORT + 3)) P_MANY_ADMIN=$((BASE_PORT + 4))
upstream_nginx "$P_UP"

route() { # name prefix [host]
    printf '[[routes]]\nname = "%s"\nmatch = { path_prefix = "%s"%s }\nupstream = "http://127.0.0.1:%s"\n\n' \
        "$1" "$2" "${3:+, host = \"$3\"}" "$P_UP"
}
route api /api/ >"$WORK/one.toml"
{
    for i in $(seq 0 999); do
        if ((i % 2)); then route "d$i" "/d$i/"; else route "h$i" /api/ "h$i.example"; fi
    done
    route api /api/
} >"$WORK/many.toml"
"$BIN" check --config "$WORK/many.toml" >"$WORK/check.txt" || die "1,001-route config rejected"

start() { # name config port admin
    "$BIN" run --config "$2" --listen "127.0.0.1:$3" --admin "127.0.0.1:$4" --workers 1 \
        >"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    printf -v "PID_$1" '%s' "$!"
}
start one "$WORK/one.toml" "$P_ONE" "$P_ONE_ADMIN"
start many "$WORK/many.toml" "$P_MANY" "$P_MANY_ADMIN"
for p in "$P_UP" "$P_ONE" "$P_MANY"; do wait_port "$p"; done

cat >"$WORK/one-path.lua" <<'LUA'
request = function() return wrk.format("GET", "/api/items/42") end
LUA
cat >"$WORK/many-paths.lua" <<'LUA'
local n = 0
request = function()
  n = (n + 1) % 100000
  return wrk.format("GET", "/api/items/" .. n)
end
LUA

ticks() { local s; s=$(<"/proc/$1/stat"); s=${s##*) }; read -r -a f <<<"$s"; echo $((f[11] + f[12])); }
HZ=$(getconf CLK_TCK)
TSV=$WORK/scale.tsv
: >"$TSV"
for cell in one:one-path one:many-paths many:one-path many:many-paths; do
    wrk -t1 -c"$CONNECTIONS" -d2s -s "$WORK/${cell#*:}.lua" "http://127.0.0.1:$P_ONE" >/dev/null # warm-up
done
for r in $(seq "$ROUNDS"); do
    for cell in one:one-path one:many-paths many:one-path many:many-paths; do
        sl=${cell%%:*} paths=${cell#*:}
        port=$P_ONE
        [ "$sl" = many ] && port=$P_MANY
        pid_var=PID_$sl
        c0=$(ticks "${!pid_var}")
        out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$WORK/$paths.lua" "http://127.0.0.1:$port")
        c1=$(ticks "${!pid_var}")
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
        ! grep -q "Non-2xx" <<<"$out" || die "$cell: non-2xx responses: $out"
        cpu=$(awk -v d=$((c1 - c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.2f", d/hz*1e6/n}')
        printf '%s\t%s\t%s\t%s\n' "$cell" "$r" "$rps" "$cpu" >>"$TSV"
        echo "[scale] round $r $cell: $rps req/s, $cpu µs/req" >&2
    done
done

median() { sort -g | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }
ratio() { # cell column -> median over rounds of cell/base
    awk -F'\t' -v c="$1" -v k="$2" '$1=="one:one-path"{b[$2]=$k} $1==c{x[$2]=$k}
        END{for (r in x) if (b[r] > 0) printf "%.4f\n", x[r]/b[r]}' "$TSV" | median
}
echo
echo "statuslens $(cd "$ROOT" && git rev-parse --short HEAD), $ROUNDS rounds × ${DURATION}s, wrk -t1 -c$CONNECTIONS, 1 worker, medians:"
echo
echo "| routes, paths | req/s | CPU µs/req | req/s ÷ (1 route, 1 path) | CPU ÷ (1 route, 1 path) |"
echo "|---|---:|---:|---:|---:|"
for cell in one:one-path one:many-paths many:one-path many:many-paths; do
    case $cell in
    one:one-path) name="1 route, 1 path" ;; one:many-paths) name="1 route, 100,000 paths" ;;
    many:one-path) name="1,001 routes, 1 path" ;; many:many-paths) name="1,001 routes, 100,000 paths" ;;
    esac
    rps=$(awk -F'\t' -v c="$cell" '$1==c{print $3}' "$TSV" | median)
    cpu=$(awk -F'\t' -v c="$cell" '$1==c{print $4}' "$TSV" | median)
    echo "| $name | ${rps%.00} | $cpu | $(ratio "$cell" 3)× | $(ratio "$cell" 4)× |"
done
