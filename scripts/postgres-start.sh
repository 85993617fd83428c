#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster in DIR (default .postgres-test): initdb (UTF8, C collation
# and ctype, as Synapse requires), listening only on 127.0.0.1 at a free port (or $MOSS_PG_PORT)
# with its unix socket inside DIR, plus a login role and a database (from template0) for Synapse.
# Writes DIR/env with MOSS_TEST_PG_* exports and prints that file's path, so callers can
#     source "$(scripts/postgres-start.sh DIR)"
# Stop it with: DIR/stop   (or kill "$(cat DIR/postgres.pid)")
# Re-running on the same DIR stops the cluster there and starts a fresh one. PostgreSQL refuses
# to run as root: as root the cluster runs as the `postgres` system user (from Debian's package).
# Needs Debian's postgresql (scripts/setup-postgres.sh). Takes a few seconds.
set -euo pipefail

fail() { echo "postgres-start: $*" >&2; exit 1; }

dir="${1:-$PWD/.postgres-test}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
db="${MOSS_PG_DB:-synapse}"
role="${MOSS_PG_ROLE:-synapse}"

# Debian keeps the server binaries in /usr/lib/postgresql/<major>/bin, off PATH.
bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
    command -v initdb > /dev/null || fail "initdb not found: run scripts/setup-postgres.sh"
    bindir="$(dirname "$(command -v initdb)")"
fi
psql="$bindir/psql"
[[ -x "$psql" ]] || psql="$(command -v psql)" || fail "psql not found"

if [[ "$(id -u)" == 0 ]]; then
    os_user="${MOSS_PG_OS_USER:-postgres}"
    id "$os_user" > /dev/null 2>&1 || fail "no '$os_user' system user (PostgreSQL refuses to run as root)"
    if command -v runuser > /dev/null; then
        as_pg() { runuser -u "$os_user" -- "$@"; }
        as_pg_text="runuser -u $os_user --"
    else
        as_pg() { su -s /bin/sh "$os_user" -c "$(printf '%q ' "$@")"; }
        as_pg_text="su -s /bin/sh $os_user -c"
    fi
else
    os_user="$(id -un)"
    as_pg() { "$@"; }
    as_pg_text=""
fi

# A previous cluster in DIR: stop it, then wipe DIR (only if it is one of ours, or empty).
if [[ -f "$dir/data/postmaster.pid" ]]; then
    old_pid="$(head -1 "$dir/data/postmaster.pid" 2>/dev/null || true)"
    (cd / && as_pg "$bindir/pg_ctl" -D "$dir/data" stop -m immediate -w -t 20 > /dev/null 2>&1) || true
    if [[ -n "$old_pid" ]] && kill -0 "$old_pid" 2> /dev/null; then
        kill -9 "$old_pid" 2> /dev/null || true
    fi
fi
if [[ -n "$(ls -A "$dir")" && ! -f "$dir/.moss-postgres" ]]; then
    fail "$dir is not empty and was not made by this script; refusing to wipe it"
fi
find "$dir" -mindepth 1 -delete
touch "$dir/.moss-postgres"

sock="$dir/.s.PGSQL.65535"
(( ${#sock} < 108 )) || fail "$dir is too long a path for a unix socket (keep it under ~90 characters)"

chown "$os_user" "$dir"
chmod 700 "$dir"
as_pg test -w "$dir" || fail "user $os_user cannot write $dir (a parent directory is not searchable?)"
cd "$dir"

as_pg "$bindir/initdb" -D "$dir/data" -U postgres --encoding=UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 --no-sync > "$dir/initdb.log" 2>&1 \
    || fail "initdb failed; see $dir/initdb.log"

port_free() { ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }
started=""
for attempt in 1 2 3 4 5; do
    port="${MOSS_PG_PORT:-}"
    if [[ -z "$port" ]]; then
        for _ in $(seq 1 100); do
            p=$((20000 + RANDOM % 40000))
            if port_free "$p"; then port="$p"; break; fi
        done
    fi
    [[ -n "$port" ]] || fail "no free port found"
    cat > "$dir/data/postgresql.auto.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
logging_collector = off
CONF
    if as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start > /dev/null 2>&1; then
        started=1
        break
    fi
    [[ -z "${MOSS_PG_PORT:-}" ]] || break
done
[[ -n "$started" ]] || fail "postgres did not start; see $dir/postgres.log"

for _ in $(seq 1 100); do
    if as_pg "$bindir/pg_isready" -q -h "$dir" -p "$port" 2> /dev/null; then break; fi
    sleep 0.1
done

password="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
as_pg "$psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres > /dev/null <<SQL
CREATE ROLE "$role" LOGIN PASSWORD '$password';
CREATE DATABASE "$db" OWNER "$role" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C';
SQL

head -1 "$dir/data/postmaster.pid" > "$dir/postgres.pid"
cat > "$dir/stop" <<STOP
#!/bin/sh
# Stops the cluster that scripts/postgres-start.sh started here.
cd / && exec $as_pg_text "$bindir/pg_ctl" -D "$dir/data" stop -m fast -w -t 30 > /dev/null
STOP
chmod 755 "$dir/stop"
cat > "$dir/env" <<ENV
export MOSS_TEST_PG_HOST=127.0.0.1
export MOSS_TEST_PG_PORT=$port
export MOSS_TEST_PG_USER=$role
export MOSS_TEST_PG_PASSWORD=$password
export MOSS_TEST_PG_DB=$db
export MOSS_TEST_PG_SOCKET_DIR=$dir
export MOSS_TEST_PG_SUPERUSER=postgres
export MOSS_TEST_PG_BIN=$bindir
export MOSS_TEST_PG_DIR=$dir
export MOSS_TEST_PG_STOP=$dir/stop
ENV
echo "$dir/env"
