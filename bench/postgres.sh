#!/usr/bin/env bash
# sessiond on a shared PostgreSQL store against LangGraph's PostgresSaver on the same
# PostgreSQL, side by side in one run on this machine (a throwaway cluster on the disk,
# fsync and synchronous_commit on, as shipped):
#  - durable 1 KiB checkpoints: SessiondSaver.put against PostgresSaver.put on one psycopg
#    connection at 1 thread, and on a 16-connection pool at 16 threads (bench/savers.py);
#  - get_tuple of the latest in a thread of 1,000 checkpoints, at 1 thread;
#  - stale detection after a host's death: two daemons as two hosts, 100 sessions owned on
#    the first, SIGKILL of its daemon, time to each stale event on the second
#    (bench/stale.py; default lease settings, 1s interval and 5s ttl).
# Installs what it needs (the pinned virtualenv). Prints each cell's median over the rounds.
#
#   bench/postgres.sh          (SECONDS_PER=5 per measurement, ROUNDS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER:-5}
rounds=${ROUNDS:-3}
work=$(mktemp -d /var/tmp/sessiond-postgres.XXXXXX)   # on the disk, not a tmpfs
daemon_pid=
source bench/pg-cluster.sh
stop_all() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  pg_stop
  rm -rf "$work"
}
trap stop_all EXIT

venv=$(scripts/python-env.sh)
echo "== building sessiond (release)" >&2
cargo build --release --locked -q -p sessiond
results=$work/results.jsonl

pg_start
for db in sessiond langgraph stale; do pg_create "$db"; done

run() { # label, then a command printing one JSON object
  local label=$1; shift
  echo "== $label" >&2
  "$@" | "$venv/bin/python" -c 'import json,sys; v=json.loads(sys.stdin.readline()); v["label"]=sys.argv[1]; print(json.dumps(v))' "$label" >> "$results"
}

./target/release/sessiond --socket "$work/sessiond.sock" --state-dir "$work/state" \
  --store "$(pg_url sessiond)" --host-id bench 2>"$work/sessiond.log" &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$work/sessiond.sock" ] && break; sleep 0.1; done
savers() { "$venv/bin/python" bench/savers.py "$@" --socket "$work/sessiond.sock" --dir "$work" --seconds "$secs" --pg-url "$(pg_url langgraph)"; }

for round in $(seq "$rounds"); do
  echo "== round $round of $rounds" >&2
  for threads in 1 16; do
    run "sessiond put x$threads" savers put --saver sessiond --threads "$threads"
    run "postgres put x$threads" savers put --saver postgres --threads "$threads"
  done
  run "sessiond get" savers get --saver sessiond --checkpoints 1000
  run "postgres get" savers get --saver postgres --checkpoints 1000
done
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=
run "stale" "$venv/bin/python" bench/stale.py --sessiond ./target/release/sessiond \
  --store "$(pg_url stale)" --dir "$work/stale" --sessions 100

"$venv/bin/python" - "$results" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    v = json.loads(line)
    runs.setdefault(v["label"], []).append(v)
def med(label, key):
    xs = [v[key] for v in runs.get(label, []) if v.get(key) is not None]
    return statistics.median(xs) if xs else 0.0
n = max(len(v) for k, v in runs.items() if k != "stale")
print(f"\nmedians of {n} rounds, {sys.argv[1]}")
print("\ndurable 1 KiB checkpoints, put/s (PostgresSaver: 1 connection at 1 thread, a pool of 16 at 16):")
print(f"{'threads':>8} {'SessiondSaver':>14} {'PostgresSaver':>14} {'ratio':>7}")
for t in (1, 16):
    s, p = med(f"sessiond put x{t}", "ops_per_sec"), med(f"postgres put x{t}", "ops_per_sec")
    print(f"{t:>8} {s:>14.0f} {p:>14.0f} {s / p if p else 0:>6.2f}x")
    rows = zip(runs.get(f"sessiond put x{t}", []), runs.get(f"postgres put x{t}", []))
    print("          each round: " + "; ".join(f"{a['ops_per_sec']:.0f} / {b['ops_per_sec']:.0f}" for a, b in rows))
print("\nget_tuple, a thread of 1,000 checkpoints, p50 us (lower is better):")
print(f"{'':>8} {'SessiondSaver':>14} {'PostgresSaver':>14} {'speed-up':>9}")
for key, what in (("latest_p50_us", "latest"), ("by_id_p50_us", "by id")):
    s, p = med("sessiond get", key), med("postgres get", key)
    print(f"{what:>8} {s:>14.0f} {p:>14.0f} {p / s if s else 0:>8.2f}x")
for v in runs.get("stale", []):
    print(f"\nstale after a host's death, {v['sessions']} sessions (interval {v['lease_interval']}, ttl {v['lease_ttl']}):")
    print(f"  seen {v['seen_stale']}; p50 {v.get('p50_s', 0):.2f} s, p99 {v.get('p99_s', 0):.2f} s, max {v.get('max_s', 0):.2f} s; bound ttl+interval+1s = {v['bound_s']:.1f} s: {'within' if v.get('within_bound') else 'NOT within'}")
PY
