#!/usr/bin/env bash
# Runs Berth's tests against a real PostgreSQL.
#
#   scripts/test-postgres.sh                  # go test -race ./postgres/ ./server/
#   scripts/test-postgres.sh -run Replica ./postgres/
#   eval "$(scripts/test-postgres.sh --env)"  # only set up; print the export
#
# It installs PostgreSQL from the distribution's packages if it is missing
# (apt-get), runs a private server for tests (its own data directory, its
# own port, listening on 127.0.0.1 only; no systemd needed), creates a role
# and a database, exports BERTH_TEST_DATABASE_URL and runs `go test -race`
# with the arguments given (default: ./postgres/ ./server/). Running it
# again reuses the server, and restarts it if it stopped; it is left
# running so that later runs start at once (`--stop` stops it).
#
# Settings (environment):
#   BERTH_PG_DIR   where the server lives (default: $TMPDIR/berth-pg)
#   BERTH_PG_PORT  its port (default: the first free one from 55432)
#
# The server trades durability for speed: synchronous_commit is off for the
# test sessions (the URL sets it), fsync stays on, so a benchmark that asks
# for synchronous_commit=on measures durable commits.
set -euo pipefail

cd "$(dirname "$0")/.."

PG_DIR=${BERTH_PG_DIR:-${TMPDIR:-/tmp}/berth-pg}
DATA="$PG_DIR/data"
LOG="$PG_DIR/server.log"
ROLE=berth
PASSWORD=berth
DB=berth

log() { echo "test-postgres: $*" >&2; }

# as_pg runs a command as the user that owns the server: postgres when this
# script runs as root (PostgreSQL refuses to run as root), else ourselves.
as_pg() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# pg_bindir finds the newest installed server's binaries (Debian keeps them
# out of PATH, under /usr/lib/postgresql/<major>/bin).
pg_bindir() {
	local d
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
	if [ -n "$d" ] && [ -x "$d/initdb" ]; then
		echo "$d"
		return
	fi
	if command -v initdb >/dev/null 2>&1; then
		dirname "$(command -v initdb)"
		return
	fi
	return 1
}

install_postgres() {
	log "PostgreSQL is not installed; installing it from the distribution's packages"
	local sudo=""
	if [ "$(id -u)" != 0 ]; then
		sudo=sudo
	fi
	if ! command -v apt-get >/dev/null 2>&1; then
		log "no apt-get here: install PostgreSQL (server and client) yourself and re-run"
		exit 1
	fi
	# The package's own cluster is not needed; keep its post-install from
	# trying to start services in a container without an init system.
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql postgresql-client
}

port_free() {
	! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port() {
	local p=${BERTH_PG_PORT:-55432}
	if [ -n "${BERTH_PG_PORT:-}" ]; then
		echo "$p"
		return
	fi
	while ! port_free "$p"; do
		p=$((p + 1))
	done
	echo "$p"
}

ensure_server() {
	local bin
	if ! bin=$(pg_bindir); then
		install_postgres
		bin=$(pg_bindir)
	fi

	mkdir -p "$PG_DIR"
	if [ "$(id -u)" = 0 ]; then
		chown postgres: "$PG_DIR"
	fi
	if [ ! -s "$DATA/PG_VERSION" ]; then
		log "initializing a test cluster in $DATA"
		as_pg "$bin/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
		local port
		port=$(pick_port)
		cat >>"$DATA/postgresql.conf" <<-EOF
			# berth test server (scripts/test-postgres.sh)
			port = $port
			listen_addresses = '127.0.0.1'
			unix_socket_directories = '$PG_DIR'
			max_connections = 300
			shared_buffers = 128MB
			full_page_writes = off
			log_min_messages = warning
		EOF
	fi
	PORT=$(sed -n 's/^port = \([0-9]*\).*/\1/p' "$DATA/postgresql.conf" | tail -n 1)

	if ! ready "$bin"; then
		# Not answering. A server killed with everything else (as between a
		# session and CI) leaves its pid file, and if that pid now belongs
		# to another process PostgreSQL refuses to start; the file is stale.
		rm -f "$DATA/postmaster.pid"
		log "starting the test server on 127.0.0.1:$PORT"
		as_pg "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null
	fi

	local psql=(as_pg "$bin/psql" -h "$PG_DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt)
	if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
		"${psql[@]}" -c "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'"
	fi
	if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
		"${psql[@]}" -c "CREATE DATABASE $DB OWNER $ROLE"
	fi
	export BERTH_TEST_DATABASE_URL="postgres://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB?sslmode=disable&synchronous_commit=off"
}

# ready reports whether the test server accepts connections, waiting up
# to 5 s for one that is still starting.
ready() {
	local i
	for i in $(seq 1 25); do
		if as_pg "$1/pg_isready" -h "$PG_DIR" -p "$PORT" -q; then
			return 0
		fi
		sleep 0.2
	done
	return 1
}

stop_server() {
	local bin
	bin=$(pg_bindir) || exit 0
	if [ -s "$DATA/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
		as_pg "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
		log "stopped the test server"
	fi
}

case "${1:-}" in
--stop)
	stop_server
	exit 0
	;;
--env)
	ensure_server
	echo "export BERTH_TEST_DATABASE_URL='$BERTH_TEST_DATABASE_URL'"
	exit 0
	;;
esac

ensure_server
log "BERTH_TEST_DATABASE_URL=$BERTH_TEST_DATABASE_URL"
if [ $# -eq 0 ]; then
	set -- ./postgres/ ./server/
fi
exec go test -race "$@"
