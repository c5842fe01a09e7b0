#!/bin/sh
# Start Redis as the official image does: options alone mean redis-server with them; without a
# configuration file, protected mode is off (other containers connect without a password); the
# server runs as the redis user and owns /data.
set -eu
case "${1:-}" in
    -*) set -- redis-server "$@" ;;
esac
if [ "${1:-}" = redis-server ]; then
    if [ ! -f "${2:-}" ]; then
        set -- "$@" --protected-mode no
    fi
    if [ "$(id -u)" = 0 ]; then
        chown -R redis:redis /data
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi
exec "$@"
