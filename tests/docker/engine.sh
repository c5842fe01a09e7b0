#!/usr/bin/env bash
# A Docker engine for the container tests: installs Debian's docker.io, docker-compose and
# debootstrap when missing, and starts a dockerd of the tests' own (own data root, exec root,
# socket and bridge range; published ports default to 127.0.0.1) unless one already answers.
# Prints the DOCKER_HOST to use on its last line. Needs root. Set DOCKER_HOST to use another engine.
set -euo pipefail

ROOT=/var/lib/scorebox-ci-docker
EXEC_ROOT=/run/scorebox-ci-docker
SOCKET=unix:///run/scorebox-ci-docker.sock
LOG=/var/log/scorebox-ci-dockerd.log

missing=()
[ -x /usr/bin/docker ] && [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
[ -x /usr/bin/docker-compose ] || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

# Debian's client (20.10) has BuildKit built in; a newer client elsewhere on PATH may lack buildx.
answers() { DOCKER_HOST=$1 /usr/bin/docker version >/dev/null 2>&1; }

if [ -n "${DOCKER_HOST:-}" ]; then
    answers "$DOCKER_HOST" || { echo "no Docker engine answers at DOCKER_HOST=$DOCKER_HOST" >&2; exit 1; }
    echo "$DOCKER_HOST"
    exit 0
fi
if ! answers "$SOCKET"; then
    echo "starting dockerd (data in $ROOT, log in $LOG)" >&2
    mkdir -p "$ROOT" "$EXEC_ROOT"
    # Its own bridge range, kept away from the machine's networks; published ports bind to
    # 127.0.0.1 unless a port says otherwise.
    setsid /usr/sbin/dockerd \
        --data-root "$ROOT" --exec-root "$EXEC_ROOT" --pidfile "$EXEC_ROOT.pid" \
        --host "$SOCKET" --storage-driver overlay2 \
        --bip 172.30.0.1/24 --default-address-pool base=172.30.16.0/20,size=24 \
        --ip 127.0.0.1 >>"$LOG" 2>&1 </dev/null &
    for _ in $(seq 60); do
        answers "$SOCKET" && break
        sleep 1
    done
    answers "$SOCKET" || { echo "dockerd did not start; its log:" >&2; tail -n 30 "$LOG" >&2; exit 1; }
fi
echo "$SOCKET"
