#!/usr/bin/env bash
# What chunking costs and saves, in one run on this machine (state on the disk, release build):
#  - storage: an agent-like workload (bench/storage.py: 16 sessions x 200 checkpoints of a
#    JSON state growing by a 2 KiB message per step, all kept) in sessiond and in LangGraph's
#    SqliteSaver, every sessiond checkpoint read back and compared; then random 64 KiB
#    payloads. sessiond's bytes are what its live records take (stats) and what its state
#    directory holds once the daemon has stopped (segments trimmed, free files aside);
#  - throughput: durable 64 KiB checkpoints at 16 clients, and get-latest of a 256 KiB
#    checkpoint at 1 client read from the disk (the read cache off), with chunking on and off (`--chunking false`, the same build),
#    with payloads that are new random bytes every write (nothing to share: the worst case
#    for chunking) and with one payload written over and over (everything shared).
# Prints each throughput cell's median over the rounds. With STORE=postgres, the same on the
# shared store: a throwaway PostgreSQL cluster on the disk, a database of its own for the
# storage run (what it grew by, after VACUUM) and for each throughput measurement.
#
#   bench/chunks.sh            (SECONDS_PER=4 per measurement, ROUNDS=3 by default)
#   STORE=postgres bench/chunks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER:-4}
rounds=${ROUNDS:-3}
store=${STORE:-log}
work=$(mktemp -d /var/tmp/sessiond-chunks.XXXXXX)   # on the disk, not a tmpfs
daemon_pid=
store_args=()
pg_stop() { :; }
if [ "$store" = postgres ]; then
  source bench/pg-cluster.sh
  pg_start
  databases=0
  # A database of its own for each daemon: store_args names it.
  new_database() {
    databases=$((databases + 1))
    pg_create "bench$databases"
    store_args=(--store "$(pg_url "bench$databases")" --host-id bench)
  }
elif [ "$store" = log ]; then
  new_database() { :; }
else
  echo "STORE is log or postgres, not $store" >&2; exit 2
fi
stop_daemon() {
  if [ -n "$daemon_pid" ]; then
    kill "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=
  fi
}
trap 'stop_daemon; pg_stop; rm -rf "$work"' EXIT

venv=$(scripts/python-env.sh)
echo "== building (release)" >&2
cargo build --release --locked -q -p sessiond -p sessiond-tests --bins

echo "== storage: agent states and random payloads" >&2
mkdir -p "$work/sqlite"
new_database
pg_flag=()
[ "$store" = postgres ] && pg_flag=(--pg-url "$(pg_url "bench$databases")")
./target/release/sessiond --socket "$work/s.sock" --state-dir "$work/state" "${store_args[@]}" 2>"$work/sessiond.log" &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$work/s.sock" ] && break; sleep 0.1; done
"$venv/bin/python" bench/storage.py --socket "$work/s.sock" --sqlite-dir "$work/sqlite" "${pg_flag[@]}" > "$work/storage.json"
stop_daemon
# What the state directory keeps: segments (trimmed at the clean stop) and the index; free
# files are segments kept for reuse, shown apart.
on_disk=$(find "$work/state" -type f ! -name '*.free' -printf '%b\n' | awk '{s += $1 * 512} END {print s}')
free=$(find "$work/state" -type f -name '*.free' -printf '%b\n' | awk '{s += $1 * 512} END {print s + 0}')

bench() { # after new_database (not in the pipeline's subshell: it counts the databases)
  local daemon=()
  for arg in "${store_args[@]}"; do daemon+=(--daemon-arg "$arg"); done
  ./target/release/sessiond-bench checkpoint --spawn --json --seconds "$secs" "${daemon[@]}" "$@"
}
results=$work/throughput.jsonl
for round in $(seq "$rounds"); do
  echo "== throughput, round $round of $rounds" >&2
  for chunking in true false; do
    for payload in unique constant; do
      flag=(); [ "$payload" = unique ] && flag=(--unique)
      new_database
      bench --clients 16 --size 65536 "${flag[@]}" --daemon-arg --chunking --daemon-arg "$chunking" |
        sed "s/^{/{\"cell\":\"write $payload $chunking\",/" >> "$results"
      # The read cache off: every get reads the disk (and puts the chunks together).
      new_database
      bench --clients 1 --size 262144 --mix get "${flag[@]}" --daemon-arg --chunking --daemon-arg "$chunking" \
        --daemon-arg --read-cache-bytes --daemon-arg 0 |
        sed "s/^{/{\"cell\":\"get $payload $chunking\",/" >> "$results"
    done
  done
done

"$venv/bin/python" - "$work/storage.json" "$results" "$on_disk" "$free" "$store" <<'EOF'
import json, statistics, sys
storage = json.load(open(sys.argv[1]))
cells = {}
for line in open(sys.argv[2]):
    v = json.loads(line)
    cells.setdefault(v["cell"], []).append(v["ops_per_sec"])
on_disk, free, store = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
a, r = storage["agent"], storage["random"]
print(f"store: {store}")
mb = lambda b: f"{b / 1e6:,.1f} MB"
print(f"agent workload: {a['sessions']} sessions x {a['steps']} checkpoints, {a['read_back_identical']} read back byte-identical")
print(f"  logical bytes                 {mb(a['logical_bytes'])}")
print(f"  sessiond stored (live records) {mb(a['sessiond_stored_bytes'])}  1/{a['logical_bytes'] / a['sessiond_stored_bytes']:.1f} of logical")
both = a['sessiond_stored_bytes'] + r['stored_bytes']
if store == "log":
    print(f"  sessiond state dir, stopped   {mb(on_disk)} for these and the random payloads below ({mb(both)} stored; free files kept for reuse: {mb(free)})")
    kept = a['sessiond_stored_bytes']
else:
    kept = a['database_growth_bytes']
    print(f"  database growth (VACUUMed)    {mb(kept)}  1/{a['logical_bytes'] / kept:.1f} of logical")
print(f"  SqliteSaver file              {mb(a['sqlite_saver_bytes'])}  sessiond is 1/{a['sqlite_saver_bytes'] / kept:.1f} of it")
print(f"random 64 KiB payloads: {mb(r['logical_bytes'])} logical, {mb(r['stored_bytes'])} stored (+{100 * (r['stored_bytes'] / r['logical_bytes'] - 1):.2f} %)"
      + (f"; the database grew {mb(r['database_growth_bytes'])} (+{100 * (r['database_growth_bytes'] / r['logical_bytes'] - 1):.2f} %)" if store != "log" else ""))
print()
print(f"{'throughput (median ops/s)':34} {'chunking on':>12} {'off':>10} {'on/off':>8}")
for op, what in (("write", "64 KiB x 16 clients"), ("get", "get-latest 256 KiB x 1, disk")):
    for payload in ("unique", "constant"):
        on = statistics.median(cells[f"{op} {payload} true"])
        off = statistics.median(cells[f"{op} {payload} false"])
        print(f"{what + ', ' + payload:34} {on:12,.0f} {off:10,.0f} {on / off:8.2f}")
EOF
