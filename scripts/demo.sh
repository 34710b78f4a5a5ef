#!/usr/bin/env bash
# Starts or stops the demo nginx of `make demo` (examples/demo.conf) under build/demo.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
prefix=$root/build/demo
nginx=${NGINX:-/usr/sbin/nginx}
module=$root/build/ngx_http_lua_dynamic_upstream_module.so
lua_modules=${DYNUP_LUA_MODULES_DIR:-/usr/lib/nginx/modules}

stop() {
    if [ -f "$prefix/nginx.pid" ] && kill -0 "$(cat "$prefix/nginx.pid")" 2>/dev/null; then
        kill -QUIT "$(cat "$prefix/nginx.pid")"
        for _ in $(seq 50); do
            kill -0 "$(cat "$prefix/nginx.pid" 2>/dev/null)" 2>/dev/null || break
            sleep 0.1
        done
        echo "demo nginx stopped"
    fi
}

case "${1:-start}" in
stop)
    stop
    ;;
start)
    stop
    mkdir -p "$prefix/logs" "$prefix/tmp" "$prefix/state"
    # The workers run as nobody: they need to reach their temp directories and to write the
    # state file.
    chmod 755 "$prefix" "$prefix/tmp"
    chown nobody "$prefix/state"
    sed -e "s|@PREFIX@|$prefix|g" -e "s|@MODULE@|$module|g" -e "s|@LUA_MODULES@|$lua_modules|g" \
        "$root/examples/demo.conf" >"$prefix/nginx.conf"
    "$nginx" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log"
    for _ in $(seq 50); do
        curl -fsS -o /dev/null http://127.0.0.1:8080/dynamic/zones 2>/dev/null && break
        sleep 0.1
    done
    cat <<TXT

The demo nginx runs with the module on 127.0.0.1:8080 (config: build/demo/nginx.conf, log:
build/demo/logs/error.log, peers saved in build/demo/state/backends.peers). Try:

    curl http://127.0.0.1:8080/                      # proxied to a peer of upstream "backends"
    curl http://127.0.0.1:8080/dynamic/zones         # list_upstreams() as JSON
    curl http://127.0.0.1:8080/dynamic/describe      # describe_zone("backends") as JSON
    curl 'http://127.0.0.1:8080/dynamic/add?server=127.0.0.1:8084&weight=2'   # add_peer
    curl 'http://127.0.0.1:8080/dynamic/down?server=127.0.0.1:8081'           # set_peer_down
    curl 'http://127.0.0.1:8080/dynamic/remove?server=127.0.0.1:8084'         # remove_peer

Stop it with: make demo-stop
TXT
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
