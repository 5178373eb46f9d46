#!/usr/bin/env bash
# benches/idle.sh: statuslens' memory with many idle keep-alive client connections
# (issue 5: 10,000 of them within 256 MiB RSS).
#
# statuslens (release build, defaults, 1 worker) in front of an nginx upstream; a Python
# client opens CONNECTIONS keep-alive connections one after another, sends one request
# on each, reads the response and keeps the connection open (so statuslens needs only a
# few upstream connections). RSS is read from /proc before, with all
# connections held, and after they close.
#
# Usage: CONNECTIONS=10000 bash benches/idle.sh
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"
CONNECTIONS=${CONNECTIONS:-10000}
BASE_PORT=${BASE_PORT:-18660}
prepare nginx
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -gt $((CONNECTIONS + 500)) ] ||
    die "the file limit ($(ulimit -n)) is too low for $CONNECTIONS connections"
workdir

P_UP=$BASE_PORT P_SL=$((BASE_PORT + 1)) P_ADMIN=$((BASE_PORT + 2))
upstream_nginx "$P_UP"
cat >"$WORK/statuslens.toml" <<TOML
[proxy]
header_read_timeout = "300s"
max_connections = $((CONNECTIONS + 100))
[[routes]]
name = "api"
upstream = "http://127.0.0.1:$P_UP"
TOML
"$BIN" run --config "$WORK/statuslens.toml" --workers 1 \
    --listen "127.0.0.1:$P_SL" --admin "127.0.0.1:$P_ADMIN" >"$WORK/statuslens.log" 2>&1 &
SL=$!
PIDS+=("$SL")
for p in "$P_UP" "$P_SL"; do wait_port "$p"; done
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$SL/status"; }
echo "statuslens $(cd "$ROOT" && git rev-parse --short HEAD), 1 worker"
echo "RSS before: $(rss) MiB"

python3 - "$P_SL" "$CONNECTIONS" "$WORK/held" <<'PY' &
import socket, sys, time
port, n, flag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /item HTTP/1.1\r\nHost: x\r\n\r\n")
    conns.append(s)
    got = b""
    while not got.endswith(b"ok"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"connection {i} closed")
        got += chunk
    if not got.startswith(b"HTTP/1.1 200"):
        sys.exit(f"connection {i}: {got[:40]!r}")
open(flag, "w").write(str(len(conns)))
time.sleep(3600)
PY
CLIENT=$!
PIDS+=("$CLIENT")
for _ in $(seq 600); do
    [ -s "$WORK/held" ] && break
    kill -0 "$CLIENT" 2>/dev/null || die "the client failed"
    sleep 0.5
done
[ -s "$WORK/held" ] || die "connections not all answered"
sleep 2
held=$(rss)
conns=$(ls "/proc/$SL/fd" | wc -l)
echo "RSS holding $(cat "$WORK/held") idle keep-alive connections: $held MiB ($conns open fds)"
kill "$CLIENT"
wait "$CLIENT" 2>/dev/null || true
sleep 2
echo "RSS after they closed: $(rss) MiB"
