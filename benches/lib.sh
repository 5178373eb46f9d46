# benches/lib.sh: what soak.sh, scale.sh and idle.sh share. Sourced, not run.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/statuslens}
NAME=$(basename "$0" .sh)
PIDS=()

die() { echo "$NAME: $*" >&2; exit 1; }

# Installs the Debian packages named like the missing commands, and builds statuslens
# (SKIP_BUILD=1 keeps the existing release binary).
prepare() { # commands...
    local need=() c
    for c in "$@"; do command -v "$c" >/dev/null || need+=("$c"); done
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"
    fi
    [ "${SKIP_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release -q)
}

# A temp dir in $WORK; on exit, everything in PIDS is stopped and the dir removed.
workdir() {
    WORK=$(mktemp -d "/tmp/statuslens-$NAME.XXXXXX")
    chmod 755 "$WORK"
    trap cleanup EXIT
}
cleanup() {
    local rc=$? p
    trap - EXIT
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
    exit "$rc"
}

# nginx as the upstream on 127.0.0.1:PORT, 1 worker, `return 200 "ok"` on / and the
# given extra server lines; static files go in $WORK/up/www.
upstream_nginx() { # port [extra server lines]
    mkdir -p "$WORK/up/tmp" "$WORK/up/www"
    chmod -R 755 "$WORK/up"
    cat >"$WORK/up/nginx.conf" <<NGX
worker_processes 1;
worker_rlimit_nofile 40000;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 30000; }
http {
    access_log off;
    client_body_temp_path $WORK/up/tmp;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / { return 200 "ok"; }
        ${2:-}
    }
}
NGX
    nginx -p "$WORK/up/" -c "$WORK/up/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
}

wait_port() { # port
    local _
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on port $1"
}
