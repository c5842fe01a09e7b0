#!/bin/sh
# Start PostgreSQL as the official image does for the variables scorebox uses: on an empty
# PGDATA, make a UTF-8 cluster whose superuser (POSTGRES_USER, default postgres) has
# POSTGRES_PASSWORD, reachable from other containers, with the database POSTGRES_DB; on an
# initialised PGDATA, start it as it is (a changed password is not applied).
set -eu
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"

if [ "${1:-}" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "error: the database is not initialised and POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    user="${POSTGRES_USER:-postgres}"
    database="${POSTGRES_DB:-$user}"
    password_file="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
    initdb --username="$user" --pwfile="$password_file" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$password_file"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$database" != postgres ]; then
        # A private socket, so a healthcheck's pg_isready does not see this temporary server.
        socket="$(mktemp -d)"
        pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$socket" \
            start >/dev/null
        echo 'CREATE DATABASE :"database"' |
            psql -q -v ON_ERROR_STOP=1 -v database="$database" -h "$socket" -U "$user" -d postgres
        pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
        rmdir "$socket"
    fi
    echo "initialised a UTF-8 cluster in $PGDATA with the database $database"
fi

exec "$@"
