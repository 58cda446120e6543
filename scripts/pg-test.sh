#!/usr/bin/env bash
# pg-test.sh — a throwaway PostgreSQL server for the store's tests (developers and .ci/run).
#
#   scripts/pg-test.sh start   create (first time) and start the cluster; prints the server URL
#   scripts/pg-test.sh stop    stop the cluster and delete its directory
#   scripts/pg-test.sh url     print the server URL (for GAIT_TEST_DATABASE_URL)
#   scripts/pg-test.sh status  say whether it runs
#
# Idempotent: start on a running cluster and stop on a missing one succeed. The cluster lives under
# ${GAIT_PG_DIR:-/tmp/gait-pg}, listens on 127.0.0.1:${GAIT_PG_PORT:-55432} with trust auth and fsync off
# (test data only), and its Unix socket sits in the same directory. Run as root (initdb/pg_ctl run as the
# `postgres` user via runuser) or as a non-root user who owns GAIT_PG_DIR. PostgreSQL is installed with
# apt-get only when no server binaries are found.
#
# Typical use:
#   scripts/pg-test.sh start
#   GAIT_TEST_DATABASE_URL=$(scripts/pg-test.sh url) cargo test -p gait-store
set -euo pipefail

DIR="${GAIT_PG_DIR:-/tmp/gait-pg}"
PORT="${GAIT_PG_PORT:-55432}"
DATA="$DIR/data"
LOG="$DIR/server.log"
URL="postgres://postgres@127.0.0.1:${PORT}/postgres"

die() { echo "pg-test: $*" >&2; exit 1; }

find_bin() {
    local candidates
    candidates=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [[ -n "$candidates" && -x "$candidates/initdb" ]]; then
        echo "$candidates"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

ensure_installed() {
    PGBIN=$(find_bin)
    if [[ -z "$PGBIN" ]]; then
        [[ $(id -u) -eq 0 ]] || die "no PostgreSQL binaries found and not root: install postgresql (e.g. apt-get install postgresql)"
        command -v apt-get >/dev/null 2>&1 || die "no PostgreSQL binaries found and no apt-get: install PostgreSQL and put initdb on PATH"
        echo "pg-test: installing postgresql with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq postgresql >/dev/null
        PGBIN=$(find_bin)
        [[ -n "$PGBIN" ]] || die "apt-get installed postgresql but initdb was not found"
    fi
}

# Runs a server binary as the cluster's owner: `postgres` when we are root (initdb refuses root), else ourselves.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

is_running() {
    [[ -n "${PGBIN:-}" && -f "$DATA/PG_VERSION" ]] && as_owner "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

start() {
    ensure_installed
    if is_running; then
        echo "$URL"
        return
    fi
    mkdir -p "$DIR"
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "user postgres does not exist (install the postgresql package)"
        chown postgres:postgres "$DIR"
    fi
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        rm -rf "$DATA"
        as_owner "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-instructions >/dev/null
    fi
    as_owner "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 30 \
        -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null \
        || die "server did not start; see $LOG"
    echo "$URL"
}

stop() {
    PGBIN=$(find_bin)
    if is_running; then
        as_owner "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    fi
    rm -rf "$DIR"
    echo "pg-test: stopped and removed $DIR" >&2
}

status() {
    PGBIN=$(find_bin)
    if is_running; then
        echo "running: $URL"
    else
        echo "not running"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) echo "$URL" ;;
    status) status ;;
    *) die "usage: $0 start|stop|url|status" ;;
esac
