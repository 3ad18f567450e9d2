#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests and benchmarks (Debian's server binaries: initdb, pg_ctl).
#
#   scripts/pg_throwaway.sh run -- CMD ARGS...   start one, run CMD with VITRINE_TEST_PG_URL set, stop it
#                                               (always, even when CMD fails); exits with CMD's status
#   scripts/pg_throwaway.sh start               start one; prints VITRINE_TEST_PG_URL=... and PG_THROWAWAY_DIR=...
#   scripts/pg_throwaway.sh stop DIR            stop the one in DIR and remove DIR
#
# The cluster lives in a fresh temp folder (data, log and unix socket), owned by an unprivileged user when
# run as root (initdb refuses root): PG_USER, else "postgres" when that user exists, else "nobody". It
# listens on 127.0.0.1 on a free port (PG_PORT to choose one), trust authentication for the role "vitrine",
# database "vitrine". fsync stays on: the ingest benchmark measures durable commits.
set -euo pipefail

find_bin() {
  if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
  if command -v pg_ctl >/dev/null 2>&1; then  # a link on PATH: the folder of the real binaries
    local real
    real=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
    if [ -x "$real/initdb" ]; then echo "$real"; return; fi
  fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$d" ] || [ ! -x "$d/initdb" ]; then
    echo "pg_throwaway: PostgreSQL server binaries not found (apt-get install postgresql, or set PG_BIN)" >&2
    exit 127
  fi
  echo "$d"
}

as_owner() {  # run "$@" as the cluster's owner
  if [ "$(id -u)" = 0 ]; then runuser -u "$OWNER" -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local psql
  BIN=$(find_bin)
  OWNER=${PG_USER:-$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)}
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/vitrine-pg.XXXXXX")
  chmod 755 "$DIR"
  [ "$(id -u)" = 0 ] && chown "$OWNER" "$DIR"
  PORT=${PG_PORT:-$(free_port)}
  as_owner "$BIN/initdb" -D "$DIR/data" -U vitrine --auth=trust -E UTF8 --no-locale >"$DIR/initdb.log" 2>&1 || {
    cat "$DIR/initdb.log" >&2; rm -rf "$DIR"; exit 1; }
  # in the configuration file, so that a plain `pg_ctl -D DIR/data start` starts it the same way again
  as_owner sh -c "printf '%s\n' \"port = $PORT\" \"unix_socket_directories = '$DIR'\" \
    \"listen_addresses = '127.0.0.1'\" 'max_connections = 300' >> '$DIR/data/postgresql.conf'"
  as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start >/dev/null || {
    cat "$DIR/server.log" >&2; rm -rf "$DIR"; exit 1; }
  psql=psql
  [ -x "$BIN/psql" ] && psql="$BIN/psql"
  as_owner "$psql" -h "$DIR" -p "$PORT" -U vitrine -d postgres -qAt -c "CREATE DATABASE vitrine" >/dev/null || {
    stop "$DIR"; exit 1; }
  echo "$BIN" >"$DIR/bin" 2>/dev/null || as_owner sh -c "echo '$BIN' > '$DIR/bin'"
  echo "$OWNER" >"$DIR/owner" 2>/dev/null || as_owner sh -c "echo '$OWNER' > '$DIR/owner'"
  URL="postgresql://vitrine@127.0.0.1:$PORT/vitrine"
}

stop() {
  local dir=$1
  [ -d "$dir" ] || return 0
  BIN=$(cat "$dir/bin" 2>/dev/null || find_bin)
  OWNER=$(cat "$dir/owner" 2>/dev/null || echo nobody)
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 ||
      as_owner "$BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start)
    start
    echo "VITRINE_TEST_PG_URL=$URL"
    echo "PG_THROWAWAY_DIR=$DIR"
    ;;
  stop)
    stop "${2:?usage: pg_throwaway.sh stop DIR}"
    ;;
  run)
    shift
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || { echo "usage: pg_throwaway.sh run -- CMD ARGS..." >&2; exit 2; }
    start
    trap 'stop "$DIR"' EXIT
    trap 'exit 130' INT TERM
    echo "pg_throwaway: PostgreSQL at $URL ($DIR)" >&2
    status=0
    VITRINE_TEST_PG_URL=$URL "$@" || status=$?
    exit $status
    ;;
  *)
    echo "usage: pg_throwaway.sh run -- CMD ARGS... | start | stop DIR" >&2
    exit 2
    ;;
esac
