#!/usr/bin/env bash
# A local whispr cluster: Redis + PostgreSQL + two nodes (+ nginx in front, if installed).
# Everything runs as background processes under $STATE (default ./var/local-cluster), on loopback.
#
#   deploy/local/cluster.sh up       start (initialises PostgreSQL and migrates on first run)
#   deploy/local/cluster.sh status   what runs, and each node's /ready
#   deploy/local/cluster.sh drain N  SIGTERM node N (1 or 2): watch it drain in its log
#   deploy/local/cluster.sh down     stop everything (nodes drain first)
#
# Ports (override with the variables): nginx 4000, nodes 4001 and 4002, Redis 6390, PostgreSQL 5440.
set -euo pipefail
cd "$(dirname "$0")/../.."

STATE=${STATE:-var/local-cluster}
REDIS_PORT=${REDIS_PORT:-6390}
PG_PORT=${PG_PORT:-5440}
NODE_PORTS=(${NODE1_PORT:-4001} ${NODE2_PORT:-4002})
NGINX_PORT=${NGINX_PORT:-4000}
PYTHON=${PYTHON:-.venv/bin/python}
STATE=$(mkdir -p "$STATE" && cd "$STATE" && pwd)
STORE_URL="postgresql://postgres@127.0.0.1:$PG_PORT/whispr"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Settings shared by both nodes. The dev secrets live in $STATE/shared so that both nodes, and
# `whispr token --dev --data-dir $STATE/shared`, agree on them.
node_env() {
    export WHISPR_STORE_URL=$STORE_URL WHISPR_REDIS_URL=$REDIS_URL
    export WHISPR_TRUSTED_PROXIES=127.0.0.1/32 WHISPR_DRAIN_WINDOW=${WHISPR_DRAIN_WINDOW:-5}
    export WHISPR_JWT_SECRET=${WHISPR_JWT_SECRET:-$(cat "$STATE/shared/jwt-secret")}
    export WHISPR_API_KEY=${WHISPR_API_KEY:-$(cat "$STATE/shared/api-key")}
}

up() {
    mkdir -p "$STATE/shared"
    [ -f "$STATE/shared/jwt-secret" ] || "$PYTHON" -c "import secrets; print(secrets.token_urlsafe(36))" >"$STATE/shared/jwt-secret"
    [ -f "$STATE/shared/api-key" ] || "$PYTHON" -c "import secrets; print(secrets.token_urlsafe(24))" >"$STATE/shared/api-key"

    if ! alive "$STATE/redis.pid"; then
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
            --daemonize yes --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log" --dir "$STATE"
    fi

    local bin; bin=$(pg_bin)
    [ -n "$bin" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
    if [ ! -d "$STATE/pg" ]; then
        mkdir -p "$STATE/pg"; [ "$(id -u)" = 0 ] && chown postgres "$STATE/pg"
        as_pg "$bin/initdb" -D "$STATE/pg/data" -A trust -U postgres -E UTF8 >/dev/null
        fresh=1
    fi
    if ! as_pg "$bin/pg_ctl" -D "$STATE/pg/data" status >/dev/null 2>&1; then
        as_pg "$bin/pg_ctl" -D "$STATE/pg/data" -l "$STATE/pg/postgres.log" -w start \
            -o "-p $PG_PORT -k $STATE/pg -c listen_addresses=127.0.0.1" >/dev/null
    fi
    [ -z "${fresh:-}" ] || as_pg "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres whispr
    "$PYTHON" -m whispr migrate --store "$STORE_URL"

    node_env
    for i in 1 2; do
        local port=${NODE_PORTS[$((i - 1))]}
        if ! alive "$STATE/node$i.pid"; then
            "$PYTHON" -m whispr serve --host 127.0.0.1 --port "$port" --node-id "local-$i" \
                --data-dir "$STATE/node$i" >"$STATE/node$i.log" 2>&1 &
            echo $! >"$STATE/node$i.pid"
        fi
    done

    if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
        local nginx; nginx=$(command -v nginx || echo /usr/sbin/nginx)
        mkdir -p "$STATE/nginx"
        sed -e "s|    server 127.0.0.1:4001 |    server 127.0.0.1:${NODE_PORTS[0]} |" \
            -e "s|    server 127.0.0.1:4002 |    server 127.0.0.1:${NODE_PORTS[1]} |" \
            -e "s|listen 80;|listen 127.0.0.1:$NGINX_PORT;|" deploy/nginx/whispr.conf >"$STATE/nginx/whispr.conf"
        cat >"$STATE/nginx/nginx.conf" <<EOF
pid $STATE/nginx/nginx.pid;
error_log $STATE/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log $STATE/nginx/access.log;
    client_body_temp_path $STATE/nginx/body; proxy_temp_path $STATE/nginx/proxy;
    fastcgi_temp_path $STATE/nginx/fastcgi; uwsgi_temp_path $STATE/nginx/uwsgi; scgi_temp_path $STATE/nginx/scgi;
    include $STATE/nginx/whispr.conf;
}
EOF
        alive "$STATE/nginx/nginx.pid" || "$nginx" -p "$STATE/nginx" -c "$STATE/nginx/nginx.conf"
    fi
    for port in "${NODE_PORTS[@]}"; do  # wait (30 s at most) until both nodes are ready
        for _ in $(seq 150); do
            [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready" || true)" = 200 ] && break
            sleep 0.2
        done
    done
    status
    cat <<EOF

Connect:  ws://127.0.0.1:$NGINX_PORT/socket/websocket?vsn=2.0.0&token=TOKEN   (through nginx)
          ws://127.0.0.1:${NODE_PORTS[0]}/socket/websocket...  or ${NODE_PORTS[1]}  (one node)
Token:    WHISPR_JWT_SECRET=\$(cat $STATE/shared/jwt-secret) $PYTHON -m whispr token alice phone
User:     WHISPR_API_KEY=\$(cat $STATE/shared/api-key) $PYTHON -m whispr user activate alice --url http://127.0.0.1:${NODE_PORTS[0]}
Logs:     $STATE/node1.log $STATE/node2.log
EOF
}

status() {
    for i in 1 2; do
        local port=${NODE_PORTS[$((i - 1))]} state=stopped
        alive "$STATE/node$i.pid" && state="pid $(cat "$STATE/node$i.pid"), /ready $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready" || true)"
        echo "node $i (:$port): $state"
    done
    alive "$STATE/redis.pid" && echo "redis (:$REDIS_PORT): running" || echo "redis: stopped"
    alive "$STATE/nginx/nginx.pid" && echo "nginx (:$NGINX_PORT): running" || echo "nginx: stopped"
}

drain() {
    local i=${1:?node number}
    alive "$STATE/node$i.pid" || { echo "node $i is not running" >&2; exit 1; }
    kill -TERM "$(cat "$STATE/node$i.pid")"
    while alive "$STATE/node$i.pid"; do sleep 0.2; done
    grep -E "drain done|tree 'root' stopped" "$STATE/node$i.log" | tail -2
}

down() {
    for i in 1 2; do alive "$STATE/node$i.pid" && kill -TERM "$(cat "$STATE/node$i.pid")"; done
    for i in 1 2; do while alive "$STATE/node$i.pid"; do sleep 0.2; done; done
    alive "$STATE/nginx/nginx.pid" && kill -QUIT "$(cat "$STATE/nginx/nginx.pid")"
    alive "$STATE/redis.pid" && kill "$(cat "$STATE/redis.pid")"
    local bin; bin=$(pg_bin)
    [ -d "$STATE/pg/data" ] && as_pg "$bin/pg_ctl" -D "$STATE/pg/data" -m fast -w stop >/dev/null 2>&1 || true
    echo "stopped (state kept in $STATE; rm -rf it to start over)"
}

case "${1:-}" in
    up) up ;;
    status) status ;;
    drain) drain "${2:-}" ;;
    down) down ;;
    *) sed -n '2,10p' "$0"; exit 2 ;;
esac
