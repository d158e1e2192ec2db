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
#   BERTH_PG_PORT  its port (default: the first free one from 25432 outside
#                  the kernel's ephemeral port range)
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

# port_free reports whether nothing on this machine uses the TCP port:
# no listener, and no connection of any state, because a client socket
# in TIME_WAIT on the port also makes PostgreSQL's bind fail.
port_free() {
	if command -v ss >/dev/null 2>&1; then
		[ -z "$(ss -Htan "sport = :$1" 2>/dev/null)" ]
	else
		! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}

# ephemeral reports whether the port lies in the kernel's range for
# outgoing connections. A server there can find its port taken by any
# client (the test suites make tens of thousands of local connections),
# so the test server keeps out of it.
ephemeral() {
	local lo hi
	read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || return 1
	[ "$1" -ge "$lo" ] && [ "$1" -le "$hi" ]
}

# pick_port prints BERTH_PG_PORT if set, else the first free port from
# $1 (default 25432) that is outside the ephemeral range.
pick_port() {
	if [ -n "${BERTH_PG_PORT:-}" ]; then
		echo "$BERTH_PG_PORT"
		return
	fi
	local p=${1:-25432}
	while ephemeral "$p" || ! port_free "$p"; do
		p=$((p + 1))
		if [ "$p" -gt 65535 ]; then
			p=1024
		fi
	done
	echo "$p"
}

# set_port makes the cluster listen on a new port from its next start.
set_port() {
	as_pg sed -i "s/^port = [0-9]*/port = $1/" "$DATA/postgresql.conf"
	PORT=$1
}

# start_server starts the test server, moving it to another port when its
# own is taken (unless BERTH_PG_PORT fixes it), and shows the end of the
# server's log when it cannot.
start_server() {
	local bin=$1 attempt
	if [ -n "${BERTH_PG_PORT:-}" ] && [ "$BERTH_PG_PORT" != "$PORT" ]; then
		set_port "$BERTH_PG_PORT"
	fi
	for attempt in 1 2 3; do
		if [ -z "${BERTH_PG_PORT:-}" ] && { ephemeral "$PORT" || ! port_free "$PORT"; }; then
			local next
			next=$(pick_port)
			log "port $PORT is in use or in the ephemeral range; the test server moves to $next"
			set_port "$next"
		fi
		# A server killed with everything else (as between a session and
		# CI) leaves its pid file, and if that pid now belongs to another
		# process PostgreSQL refuses to start; the file is stale.
		rm -f "$DATA/postmaster.pid"
		log "starting the test server on 127.0.0.1:$PORT"
		if as_pg "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null; then
			return 0
		fi
		log "attempt $attempt failed"
		sleep 1
	done
	log "could not start the test server; the end of $LOG:"
	tail -n 30 "$LOG" >&2
	exit 1
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
		start_server "$bin"
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
