# Sourced by the benchmarks that need PostgreSQL: a throwaway cluster under "$work/pg" on the
# disk (fsync and synchronous_commit on, as shipped), reached by its Unix socket in
# "$work/pg-socket". Both are the postgres user's when run as root; "$work" itself stays the
# caller's, so the daemon's socket may live there (sessiond refuses a socket directory another
# user owns). Defines pg_start, pg_stop, pg_url DB and pg_create DB.
pgbin=$(dirname "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")
as_pg=()
pg_start() {
  mkdir -p "$work/pg" "$work/pg-socket"
  if [ "$(id -u)" = 0 ]; then
    as_pg=(runuser -u postgres --)
    chown postgres: "$work/pg" "$work/pg-socket"
    chmod o+x "$work"
  fi
  echo "== a throwaway PostgreSQL cluster in $work/pg" >&2
  "${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 >/dev/null
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w \
    -o "-k $work/pg-socket -c listen_addresses= -p 5432 -c max_connections=200" start >/dev/null
}
pg_stop() {
  [ -f "$work/pg/postmaster.pid" ] && "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1
  return 0
}
pg_url() { echo "postgresql:///$1?host=$work/pg-socket&port=5432&user=postgres"; }
pg_create() { psql -q "$(pg_url postgres)" -c "CREATE DATABASE $1"; }
