#!/usr/bin/env bash
# pg.sh - a private PostgreSQL 15 cluster for development and tests.
#
#   tools/pg.sh start  DIR PORT    initdb on first use, start, wait until ready, ensure db/roles
#   tools/pg.sh stop   DIR PORT    fast shutdown (no error when not running)
#   tools/pg.sh status DIR PORT    exit 0 when running, 3 when not; prints the DSNs
#   tools/pg.sh setup  DIR PORT    (re)ensure database cms, role cmsd, GRANT cms_server TO cmsd
#   tools/pg.sh dsn    DIR PORT [ROLE]   print the libpq DSN (ROLE: postgres (default) | cmsd)
#   tools/pg.sh psql   DIR PORT [psql args...]   psql on database cms as the superuser
#
# The cluster:
#   DIR/data            PGDATA (initdb: superuser "postgres", UTF8, C.UTF-8, trust on the Unix
#                       socket; no TCP at all: listen_addresses = '')
#   DIR                 the Unix socket directory (DIR/.s.PGSQL.PORT)
#   DIR/postgres.log    server log
#   database cms        owned by the superuser; `cmsctl db migrate` creates the schema and role
#                       cms_server; login role cmsd (no password, socket trust) is granted
#                       cms_server as soon as that role exists (start and setup do it)
#   DSNs                superuser: host=DIR port=PORT dbname=cms user=postgres
#                       cmsd:      host=DIR port=PORT dbname=cms user=cmsd
#
# As root the server runs as the `postgres` account (runuser), DIR is chowned to it; otherwise
# it runs as the calling user. If the `postgres` account cannot reach DIR (a parent directory
# such as /root is mode 0700) or the socket path would be too long, the cluster lives in
# /var/tmp/cms-pg-<hash of DIR> instead and DIR/cluster points at it (`dsn` prints the host).
#
# Environment: PG_BIN (default /usr/lib/postgresql/15/bin), PG_FAST=1 (fsync/full_page_writes
# off at start: throwaway clusters only), PG_READY_TIMEOUT (seconds, default 60).
set -euo pipefail

PROG=${0##*/}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SUPERUSER=postgres
DBNAME=cms
APPROLE=cmsd

die() {
	echo "$PROG: $*" >&2
	exit 1
}

usage() {
	sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

(($# >= 3)) || usage
CMD=$1
DIR=$2
PORT=$3
shift 3
if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then die "bad port: $PORT"; fi
[[ -x $PG_BIN/initdb ]] || die "$PG_BIN/initdb not found: run tools/deps.sh (postgresql-15)"

AS=()
if ((EUID == 0)); then
	id postgres >/dev/null 2>&1 || die "no postgres account: run tools/deps.sh (postgresql)"
	AS=(runuser -u postgres --)
fi

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

# where the cluster lives: DIR itself, unless the server account cannot use it
cluster_root() {
	local link=$DIR/cluster
	if [[ -L $link ]]; then
		readlink "$link"
		return 0
	fi
	local sock=$DIR/.s.PGSQL.$PORT.lock
	if ((${#sock} < 100)) && { ((EUID != 0)) || runuser -u postgres -- test -x "$DIR"; }; then
		echo "$DIR"
		return 0
	fi
	local h
	h=$(printf '%s' "$DIR" | cksum | cut -d' ' -f1)
	echo "/var/tmp/cms-pg-$h"
}

ROOT=$(cluster_root)
if [[ $ROOT != "$DIR" ]]; then
	mkdir -p "$ROOT"
	chmod 0755 "$ROOT"
	[[ -L $DIR/cluster ]] || ln -sfn "$ROOT" "$DIR/cluster"
fi
PGDATA=$ROOT/data
LOGFILE=$ROOT/postgres.log

dsn() { echo "host=$ROOT port=$PORT dbname=$DBNAME user=${1:-$SUPERUSER}"; }

as_server() { "${AS[@]}" "$@"; }

psql_super() { # psql_super DB SQL...: quiet, stop on error, one value per line
	local db=$1
	shift
	as_server "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At -h "$ROOT" -p "$PORT" -U "$SUPERUSER" \
		-d "$db" "$@"
}

running() {
	[[ -f $PGDATA/PG_VERSION ]] && as_server "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

init_cluster() {
	[[ -f $PGDATA/PG_VERSION ]] && return 0
	if ((EUID == 0)); then chown postgres: "$ROOT"; fi
	echo "$PROG: initdb $PGDATA (superuser $SUPERUSER, trust on the Unix socket only)"
	as_server "$PG_BIN/initdb" -D "$PGDATA" -U "$SUPERUSER" -E UTF8 --locale=C.UTF-8 \
		--auth-local=trust --auth-host=reject >"$ROOT/initdb.log" 2>&1 ||
		{
			cat "$ROOT/initdb.log" >&2
			die "initdb failed"
		}
	# settings managed by this script live in cms.conf, rewritten at every start
	echo "include_if_exists = 'cms.conf'" | as_server tee -a "$PGDATA/postgresql.conf" >/dev/null
}

write_settings() {
	local fast=
	if [[ ${PG_FAST:-0} == 1 ]]; then
		fast=$'fsync = off\nfull_page_writes = off\nsynchronous_commit = off'
	fi
	as_server tee "$PGDATA/cms.conf" >/dev/null <<EOF
# written by tools/pg.sh at each start: do not edit
listen_addresses = ''
port = $PORT
unix_socket_directories = '$ROOT'
unix_socket_permissions = 0777
max_connections = 200
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
$fast
EOF
}

wait_ready() {
	local t=${PG_READY_TIMEOUT:-60} i
	for ((i = 0; i < t * 10; i++)); do
		if "$PG_BIN/pg_isready" -q -h "$ROOT" -p "$PORT" -d postgres -U "$SUPERUSER"; then
			return 0
		fi
		sleep 0.1
	done
	tail -n 20 "$LOGFILE" >&2 || true
	die "server not ready after ${t}s (log: $LOGFILE)"
}

setup_db() {
	local have
	have=$(psql_super postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DBNAME'")
	[[ $have == 1 ]] || psql_super postgres -c "CREATE DATABASE $DBNAME"
	psql_super "$DBNAME" -c "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$APPROLE') THEN
            CREATE ROLE $APPROLE LOGIN;
        END IF; END \$\$"
	have=$(psql_super "$DBNAME" -c "SELECT 1 FROM pg_roles WHERE rolname = 'cms_server'")
	if [[ $have == 1 ]]; then
		psql_super "$DBNAME" -c "GRANT cms_server TO $APPROLE" 2>/dev/null
	else
		echo "$PROG: role cms_server not there yet: run cmsctl db migrate, then tools/pg.sh setup"
	fi
}

print_info() {
	echo "$PROG: PostgreSQL on socket $ROOT port $PORT (data $PGDATA, log $LOGFILE)"
	echo "$PROG: superuser DSN: $(dsn)"
	echo "$PROG: cmsd DSN:      $(dsn "$APPROLE")"
	echo "$PROG: psql:          $PG_BIN/psql '$(dsn)'   (or: tools/pg.sh psql $DIR $PORT)"
	echo "$PROG: stop:          tools/pg.sh stop $DIR $PORT"
}

case $CMD in
start)
	init_cluster
	if running; then
		# A server already runs on this data directory: make sure it is ours on PORT.
		"$PG_BIN/pg_isready" -q -h "$ROOT" -p "$PORT" ||
			die "a server runs on $PGDATA but not on port $PORT: tools/pg.sh stop it first"
	else
		write_settings
		as_server "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$LOGFILE" -w -t 60 start >/dev/null ||
			{
				tail -n 20 "$LOGFILE" >&2 || true
				die "pg_ctl start failed (log: $LOGFILE)"
			}
	fi
	wait_ready
	setup_db
	print_info
	;;
stop)
	if running; then
		as_server "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
		echo "$PROG: stopped $PGDATA"
	else
		echo "$PROG: not running ($PGDATA)"
	fi
	;;
status)
	if running; then
		print_info
	else
		echo "$PROG: not running ($PGDATA)"
		exit 3
	fi
	;;
setup)
	running || die "not running: tools/pg.sh start $DIR $PORT"
	setup_db
	;;
dsn)
	dsn "${1:-$SUPERUSER}"
	;;
psql)
	running || die "not running: tools/pg.sh start $DIR $PORT"
	exec "$PG_BIN/psql" -X -h "$ROOT" -p "$PORT" -U "$SUPERUSER" -d "$DBNAME" "$@"
	;;
*) usage ;;
esac
