#!/usr/bin/env bash
# A private Docker engine for the container tests and CI, on a unix socket of its own.
#
#   scripts/docker-engine.sh start    # start it (or reuse a running one); prints `export DOCKER_HOST=...`
#   scripts/docker-engine.sh status   # exit 0 when it answers
#   scripts/docker-engine.sh stop     # stop the engine this script started
#   eval "$(scripts/docker-engine.sh start)"   # then `docker`, the Docker SDK and the tests use it
#
# Where no container registry is reachable and iptables cannot be changed (CI sandboxes, this
# project's build machines) the engine runs with --iptables=false --bridge=none: containers and
# `docker build --network host` use the host's network. Images persist under the harness cache
# ($LLAMA_HARNESS_CACHE/docker/data, default ~/.cache/llama-harness/docker/data) so layers
# (and the llama-cpp-python compile layer) are reused between runs.
# Needs root and the engine binary: `apt-get install docker.io` (Debian/Ubuntu).
set -euo pipefail

CACHE=${LLAMA_HARNESS_CACHE:-$HOME/.cache/llama-harness}
DATA_ROOT=${LLAMA_HARNESS_DOCKER_DATA:-$CACHE/docker/data}
RUN_DIR=${LLAMA_HARNESS_DOCKER_RUN:-/tmp/llama-harness-docker}
SOCK=$RUN_DIR/docker.sock
PIDFILE=$RUN_DIR/dockerd.pid
LOG=$RUN_DIR/dockerd.log
HOST="unix://$SOCK"
WAIT_S=${LLAMA_HARNESS_DOCKER_WAIT:-60}

client() {
    # Any docker CLI will do; fall back to a socket ping when none is on PATH.
    if command -v docker >/dev/null 2>&1; then
        docker -H "$HOST" version --format '{{.Server.Version}}' >/dev/null 2>&1
    else
        curl -fsS --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1
    fi
}

start() {
    if [ -S "$SOCK" ] && client; then
        echo "export DOCKER_HOST=$HOST"
        return 0
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        echo "docker-engine.sh: dockerd not found; fix: apt-get install -y docker.io" >&2
        return 1
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "docker-engine.sh: dockerd needs root (run with sudo), or point DOCKER_HOST at an engine you can use" >&2
        return 1
    fi
    mkdir -p "$RUN_DIR" "$DATA_ROOT"
    rm -f "$SOCK"
    nohup dockerd \
        --storage-driver=overlay2 \
        --iptables=false --ip-masq=false --bridge=none \
        --data-root "$DATA_ROOT" \
        --exec-root "$RUN_DIR/exec" \
        --pidfile "$PIDFILE" \
        -H "$HOST" >"$LOG" 2>&1 &
    local waited=0
    until [ -S "$SOCK" ] && client; do
        if [ "$waited" -ge "$WAIT_S" ]; then
            echo "docker-engine.sh: dockerd did not answer on $SOCK within ${WAIT_S}s; last log lines ($LOG):" >&2
            tail -n 20 "$LOG" >&2 || true
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "export DOCKER_HOST=$HOST"
}

stop() {
    if [ -f "$PIDFILE" ]; then
        local pid
        pid=$(cat "$PIDFILE")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        rm -f "$PIDFILE"
    fi
    echo "docker-engine.sh: stopped" >&2
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) if client; then echo "running: $HOST"; else echo "not running: $HOST" >&2; exit 1; fi ;;
    env) echo "export DOCKER_HOST=$HOST" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
