#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests (sourced by scripts/test.sh):
#   pg_test_start   initdb in a temp dir (as `nobody` when run as root: PostgreSQL refuses
#                   root), start it on a free port of 127.0.0.1 with trust authentication, and
#                   export PASSERELLE_TEST_PG=postgres://passerelle@127.0.0.1:PORT (the store's
#                   tests make one database each under it);
#   pg_test_stop    stop it and delete its files.
# Debian's binaries are in /usr/lib/postgresql/<version>/bin (scripts/install-test-deps.sh).

pg_test_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

pg_test_start() {
  local bin port as=()
  bin="$(pg_test_bin)" || { echo "postgres: initdb not found; skipping the PostgreSQL tests" >&2; return 0; }
  PG_TEST_DIR="$(mktemp -d /tmp/passerelle-pg.XXXXXX)"
  if [ "$(id -u)" = 0 ]; then
    chown nobody "$PG_TEST_DIR"
    as=(runuser -u nobody --)
  fi
  # A free port: bound by the OS, then released for the server (perl-base is always there).
  port="$(perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1:0")->sockport')"
  "${as[@]}" "$bin/initdb" -D "$PG_TEST_DIR/data" -U passerelle --auth=trust \
    --encoding=UTF8 --locale=C.UTF-8 >"$PG_TEST_DIR/initdb.log" 2>&1
  "${as[@]}" "$bin/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$PG_TEST_DIR -c max_connections=300 -c fsync=off" \
    start >/dev/null
  export PG_TEST_DIR PG_TEST_BIN="$bin"
  export PASSERELLE_TEST_PG="postgres://passerelle@127.0.0.1:$port"
  echo "postgres: test server at $PASSERELLE_TEST_PG ($PG_TEST_DIR)" >&2
}

pg_test_stop() {
  [ -n "${PG_TEST_DIR:-}" ] || return 0
  local as=()
  [ "$(id -u)" = 0 ] && as=(runuser -u nobody --)
  "${as[@]}" "$PG_TEST_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PG_TEST_DIR"
  unset PG_TEST_DIR PASSERELLE_TEST_PG
}
