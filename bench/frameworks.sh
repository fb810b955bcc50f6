#!/usr/bin/env bash
# What frameworks and scripts get, side by side in one run on this machine:
#  - LangGraph checkpointers: SessiondSaver.put against SqliteSaver.put (WAL, same
#    payloads), one saver shared by 1 and 16 threads each writing its own LangGraph thread;
#    get_tuple by checkpoint id in a thread of 1,000 checkpoints against get_tuple of the
#    latest (bench/savers.py); and, on one thread, twenty floor requests, twenty
#    SessiondSaver.put and twenty SqliteSaver.put, block after block (all three meet the
#    same disk);
#  - JSON lines against the binary protocol, same daemon, same load generator: 1 KiB and
#    64 KiB checkpoints at 1 and 16 clients, and get-latest at 1 client, with payloads in
#    base64 (`json`) and as raw bytes after the line (`raw`).
# Installs what it needs (the pinned Python virtualenv, scripts/python-env.sh). Prints the
# tables with each cell's median over the rounds.
#
#   bench/frameworks.sh          (SECONDS_PER=5 per measurement, ROUNDS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER:-5}
rounds=${ROUNDS:-3}
work=$(mktemp -d /var/tmp/sessiond-frameworks.XXXXXX)   # on the disk, not a tmpfs
daemon_pid=
trap '[ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null; rm -rf "$work"' EXIT

venv=$(scripts/python-env.sh)
echo "== building sessiond (release)" >&2
cargo build --release --locked -q -p sessiond -p sessiond-client -p sessiond-tests --bins
bench=./target/release/sessiond-bench
results=$work/results.jsonl

run() { # label, then a command printing one JSON object
  local label=$1; shift
  echo "== $label" >&2
  "$@" | "$venv/bin/python" -c 'import json,sys; v=json.loads(sys.stdin.readline()); v["label"]=sys.argv[1]; print(json.dumps(v))' "$label" >> "$results"
}

# The savers' daemon: release build, state on the same disk as SQLite's file.
./target/release/sessiond --socket "$work/sessiond.sock" --state-dir "$work/state" 2>"$work/sessiond.log" &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$work/sessiond.sock" ] && break; sleep 0.1; done
savers() { "$venv/bin/python" bench/savers.py "$@" --socket "$work/sessiond.sock" --dir "$work" --seconds "$secs"; }

for round in $(seq "$rounds"); do
  echo "== round $round of $rounds" >&2
  for threads in 1 16; do
    run "sessiond saver put x$threads" savers put --saver sessiond --threads "$threads"
    run "sqlite saver put x$threads" savers put --saver sqlite --threads "$threads"
    run "python floor put x$threads" savers put --saver floor --threads "$threads"
  done
  run "savers alternate" savers alternate
  run "sessiond saver get" savers get --saver sessiond --checkpoints 1000
  run "sqlite saver get" savers get --saver sqlite --checkpoints 1000
  for size in 1024 65536; do
    for clients in 1 16; do
      for enc in binary raw json; do
        run "$enc put $size x$clients" "$bench" checkpoint --spawn --encoding "$enc" --clients "$clients" --size "$size" --seconds "$secs" --json
      done
    done
  done
  for enc in binary raw json; do
    run "$enc get 1024 x1" "$bench" checkpoint --spawn --encoding "$enc" --mix get --clients 1 --size 1024 --seconds "$secs" --json
  done
done

"$venv/bin/python" - "$results" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    v = json.loads(line)
    runs.setdefault(v["label"], []).append(v)
def med(label, key):
    xs = [v[key] for v in runs.get(label, []) if v.get(key) is not None]
    return statistics.median(xs) if xs else 0.0
n = max(len(v) for v in runs.values())
print(f"\nmedians of {n} rounds, {sys.argv[1]}")
print("\nLangGraph savers, put (one saver shared by every thread, a LangGraph thread each):")
print(f"{'threads':>8} {'SessiondSaver/s':>16} {'SqliteSaver/s':>14} {'ratio':>7} {'floor/s':>9} {'floor/sqlite':>13}")
for t in (1, 16):
    s, q = med(f"sessiond saver put x{t}", "ops_per_sec"), med(f"sqlite saver put x{t}", "ops_per_sec")
    f = med(f"python floor put x{t}", "ops_per_sec")
    print(f"{t:>8} {s:>16.0f} {q:>14.0f} {s / q if q else 0:>6.2f}x {f:>9.0f} {f / q if q else 0:>12.2f}x")
print("  (floor: raw Python sockets sending pre-encoded requests, nothing else, polling for the")
print("   reply when alone as the client does: what no Python client of an out-of-process store")
print("   can beat here)")
print("  each round, SessiondSaver / SqliteSaver / floor:")
for t in (1, 16):
    rows = zip(*(runs.get(f"{n} put x{t}", []) for n in ("sessiond saver", "sqlite saver", "python floor")))
    print(f"    x{t}: " + "; ".join(" / ".join(f"{v['ops_per_sec']:.0f}" for v in row) for row in rows))
f, s, q = (med("savers alternate", k) for k in ("floor_p50_us", "sessiond_p50_us", "sqlite_p50_us"))
print("\none thread, in turn (twenty floor requests, twenty SessiondSaver.put, twenty SqliteSaver.put), p50:")
print(f"  floor {f:.0f} us, SessiondSaver {s:.0f} us, SqliteSaver {q:.0f} us: SessiondSaver "
      f"{q / s if s else 0:.2f}x SqliteSaver, the floor {q / f if f else 0:.2f}x SqliteSaver")
print("\nget_tuple in a thread of 1,000 checkpoints, p50:")
print(f"{'saver':>14} {'by id us':>9} {'latest us':>10} {'id/latest':>10}")
for name in ("sessiond", "sqlite"):
    i, l = med(f"{name} saver get", "by_id_p50_us"), med(f"{name} saver get", "latest_p50_us")
    print(f"{name:>14} {i:>9.0f} {l:>10.0f} {i / l if l else 0:>9.2f}x")
print("\nJSON lines against the binary protocol (ops/s; ratio to binary):")
print(f"{'work':>16} {'binary':>9} {'raw':>9} {'json':>9} {'raw/bin':>8} {'json/bin':>9}")
for key in ("put 1024 x1", "put 1024 x16", "put 65536 x1", "put 65536 x16", "get 1024 x1"):
    b, r, j = (med(f"{e} {key}", "ops_per_sec") for e in ("binary", "raw", "json"))
    print(f"{key:>16} {b:>9.0f} {r:>9.0f} {j:>9.0f} {r / b if b else 0:>7.2f}x {j / b if b else 0:>8.2f}x")
print("\neach round (binary / raw / json ops/s):")
for key in ("put 1024 x1", "put 1024 x16", "put 65536 x1", "put 65536 x16", "get 1024 x1"):
    rows = zip(*(runs.get(f"{e} {key}", []) for e in ("binary", "raw", "json")))
    cells = "; ".join(" / ".join(f"{v['ops_per_sec']:.0f}" for v in row) for row in rows)
    print(f"  {key}: {cells}")
PY
