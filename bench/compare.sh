#!/usr/bin/env bash
# Side by side, in one run on this machine: sessiond against Redis (appendfsync always, Unix
# socket), SQLite (WAL, synchronous=FULL, one transaction per write) and LangGraph's
# SqliteSaver, on durable checkpoint writes of 1 KiB and 64 KiB with 1 and 16 clients, and on
# reading the latest checkpoint. Installs what it needs (redis via apt as root; LangGraph in
# the pinned virtualenv of scripts/python-env.sh). Prints a table with the ratio sessiond / peer,
# then the write path against the machine's floor (a minimal server's best shape, the same
# writes) and Redis over both encodings (binary protocol and JSON lines, their payloads in
# base64 and as raw bytes after the line), and reads against
# the bare socket round trip with both ends placed alike (one CPU, two CPUs).
#
#   bench/compare.sh            (SECONDS_PER=5 per measurement, ROUNDS=3 by default)
#   RESULTS=FILE bench/compare.sh   (keeps every measurement's JSON line in FILE)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER:-5}
rounds=${ROUNDS:-3}
work=$(mktemp -d /var/tmp/sessiond-compare.XXXXXX)   # on the disk, not a tmpfs
# The CPU ceiling: the same 16-client writes with the state in memory, where fsync is free.
shm=$(mktemp -d /dev/shm/sessiond-compare.XXXXXX)
trap 'for d in "$work" "$shm"; do redis-cli -s "$d/redis.sock" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$d"; done' EXIT

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "== installing redis-server and redis-tools" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
venv=$(scripts/python-env.sh)
echo "== building sessiond (release)" >&2
cargo build --release --locked -q -p sessiond -p sessiond-client -p sessiond-tests --bins
bench=./target/release/sessiond-bench
results=$work/results.jsonl

run() { # label, then a command printing one JSON object
  local label=$1; shift
  echo "== $label" >&2
  "$@" | python3 -c 'import json,sys; v=json.loads(sys.stdin.readline()); v["label"]=sys.argv[1]; print(json.dumps(v))' "$label" >> "$results"
}

redis_rate() { # [dir] test size clients requests -> JSON
  local out dir=$work
  if [ $# -eq 5 ]; then dir=$1; shift; fi
  out=$(redis-benchmark -s "$dir/redis.sock" -t "$1" -d "$2" -c "$3" -n "$4" -r 100000 --csv | tail -1)
  python3 -c 'import sys,json; f=[x.strip("\"") for x in sys.argv[1].split(",")]; print(json.dumps({"ops_per_sec": float(f[1]), "p50_us": float(f[5])*1000 if len(f)>5 else None}))' "$out"
}

# Redis: appendonly with fsync on every write, Unix socket only. No automatic rewrite of its
# log: by default one starts whenever the log has doubled (three in its 64 KiB x16 cell alone)
# and runs on, in a child process, through the cells that follow it. Nor one between cells:
# it deletes the old log, and on a disk mounted with `discard` the deleted gigabytes' discards
# slow the next cell. The log grows by some 3 GB a round, removed with $work at the end.
for d in "$work" "$shm"; do
  redis-server --port 0 --unixsocket "$d/redis.sock" --unixsocketperm 700 --dir "$d" \
    --appendonly yes --appendfsync always --auto-aof-rewrite-percentage 0 --save "" \
    --daemonize yes --pidfile "$d/redis.pid" >/dev/null
  for _ in $(seq 100); do redis-cli -s "$d/redis.sock" ping >/dev/null 2>&1 && break; sleep 0.1; done
done

# Each piece of work is measured for every store back to back, and the whole table ROUNDS
# times: the disk's speed drifts by tens of percent over minutes, so the table reports each
# cell's median over the rounds, and peers are always compared within seconds of each other.
for round in $(seq "$rounds"); do
  echo "== round $round of $rounds" >&2
  run "socket round trip" "$bench" rtt --seconds "$secs" --json
  run "disk floor" "$bench" fsync --size 1024 --seconds "$secs" --json
  run "disk bandwidth" "$bench" fsync --size 1048576 --seconds "$secs" --json
  run "sessiond put 1024 x16 tmpfs" env TMPDIR="$shm" "$bench" checkpoint --spawn --clients 16 --size 1024 --seconds "$secs" --json
  run "redis put 1024 x16 tmpfs" redis_rate "$shm" set 1024 16 100000
  for size in 1024 65536; do
    for clients in 1 16; do
      run "sessiond put $size x$clients" "$bench" checkpoint --spawn --clients "$clients" --size "$size" --seconds "$secs" --json
      run "redis put $size x$clients" redis_rate set "$size" "$clients" $(( clients == 1 ? 8000 : 40000 ))
      run "sessiond json put $size x$clients" "$bench" checkpoint --spawn --encoding json --clients "$clients" --size "$size" --seconds "$secs" --json
      run "sessiond raw put $size x$clients" "$bench" checkpoint --spawn --encoding raw --clients "$clients" --size "$size" --seconds "$secs" --json
      # What a minimal server gets from this machine for the same writes, right after.
      TMPDIR="$work" run "durable write floor $size x$clients" "$bench" floor --clients "$clients" --size "$size" --seconds "$secs" --json
      run "sqlite put $size x$clients" python3 bench/peers.py sqlite put --clients "$clients" --size "$size" --seconds "$secs" --dir "$work"
      run "langgraph put $size x$clients" "$venv/bin/python" bench/peers.py langgraph put --clients "$clients" --size "$size" --seconds "$secs" --dir "$work"
    done
  done
  run "sessiond get 1024 x1" "$bench" checkpoint --spawn --mix get --clients 1 --size 1024 --seconds "$secs" --json
  run "sessiond json get 1024 x1" "$bench" checkpoint --spawn --encoding json --mix get --clients 1 --size 1024 --seconds "$secs" --json
  run "sessiond raw get 1024 x1" "$bench" checkpoint --spawn --encoding raw --mix get --clients 1 --size 1024 --seconds "$secs" --json
  # The same reads with the daemon and the client placed as the round trip's ends were.
  run "sessiond get 1024 x1 one cpu" "$bench" checkpoint --spawn --client-cpu 0 --daemon-cpu 0 --mix get --clients 1 --size 1024 --seconds "$secs" --json
  if [ "$(nproc)" -gt 1 ]; then
    run "sessiond get 1024 x1 two cpus" "$bench" checkpoint --spawn --client-cpu 0 --daemon-cpu 1 --mix get --clients 1 --size 1024 --seconds "$secs" --json
  fi
  run "redis get 1024 x1" redis_rate get 1024 1 100000
  run "sqlite get 1024 x1" python3 bench/peers.py sqlite get --clients 1 --size 1024 --seconds "$secs" --dir "$work"
  run "langgraph get 1024 x1" "$venv/bin/python" bench/peers.py langgraph get --clients 1 --size 1024 --seconds "$secs" --dir "$work"
done

if [ -n "${RESULTS:-}" ]; then cp "$results" "$RESULTS"; fi
python3 - "$results" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    v = json.loads(line)
    runs.setdefault(v["label"], []).append(v)
# Each cell: the median over the rounds.
r = {label: {k: statistics.median(x[k] for x in vs if x.get(k) is not None)
             for k in vs[0] if isinstance(vs[0][k], (int, float)) and any(x.get(k) is not None for x in vs)}
     for label, vs in runs.items()}
def rate(label):
    return r.get(label, {}).get("ops_per_sec") or 0.0
print()
print("medians of %d rounds" % max(len(v) for v in runs.values()))
print("%-26s %12s %12s %12s %12s   %s" % ("work", "sessiond/s", "redis/s", "sqlite/s", "langgraph/s", "ratios sessiond/peer"))
for op, size, clients in [("put", 1024, 1), ("put", 1024, 16), ("put", 65536, 1), ("put", 65536, 16), ("get", 1024, 1)]:
    key = "%s %d x%d" % (op, size, clients)
    s = rate("sessiond " + key)
    peers = [rate(p + " " + key) for p in ("redis", "sqlite", "langgraph")]
    ratios = "  ".join("%s %.2fx" % (n, s / p) if p else "%s -" % n for n, p in zip(("redis", "sqlite", "langgraph"), peers))
    print("%-26s %12.0f %12.0f %12.0f %12.0f   %s" % (key, s, *peers, ratios))
rtt = r.get("socket round trip", {}).get("p50_us", 0)
get = r.get("sessiond get 1024 x1", {}).get("p50_us", 0)
print()
print("get latest p50: sessiond %.1f us; bare Unix socket round trip p50 %.1f us (%.1fx)" % (get, rtt, get / rtt if rtt else 0))
floor = r.get("disk floor", {})
print("disk floor, 1 KiB write + fdatasync one at a time: %.0f/s appending, %.0f/s into a preallocated file, %.0f/s into a file already written"
      % (floor.get("append_per_sec", 0), floor.get("preallocated_per_sec", 0), floor.get("written_per_sec", 0)))
# One client waits for each acknowledgement: at best one round trip plus one write and
# fdatasync (into the fastest kind of file) each, one after the other.
best_floor = max(floor.get("preallocated_per_sec", 0), floor.get("written_per_sec", 0))
if best_floor and rtt:
    print("one client's bound, 1 / (1 / %.0f + %.1f us): %.0f/s (2x redis put 1024 x1 needs %.0f/s, 1.5x sqlite %.0f/s)"
          % (best_floor, rtt, 1 / (1 / best_floor + rtt / 1e6), 2 * rate("redis put 1024 x1"), 1.5 * rate("sqlite put 1024 x1")))
bw = r.get("disk bandwidth", {})
best = max(bw.get("append_per_sec", 0), bw.get("preallocated_per_sec", 0), bw.get("written_per_sec", 0))
print("disk bandwidth, 1 MiB write + fdatasync: %.0f MiB/s at best = %.0f checkpoints of 64 KiB/s (2x redis put 65536 x16 needs %.0f/s)"
      % (best, best * 16, 2 * rate("redis put 65536 x16")))
print("CPU ceiling, 1 KiB x16 with the state on tmpfs (fsync free): sessiond %.0f/s, redis %.0f/s (3x redis put 1024 x16 on disk needs %.0f/s)"
      % (rate("sessiond put 1024 x16 tmpfs"), rate("redis put 1024 x16 tmpfs"), 3 * rate("redis put 1024 x16")))
# The least a durable store does per write (read the bytes, write, fdatasync, acknowledge),
# with nothing of a store around it: no store can beat it on the same machine at that moment.
for clients, times, bar in ((1, 2, "2x redis"), (16, 3, "3x redis")):
    key = "1024 x%d" % clients
    floor, redis, ours = (rate("durable write floor " + key), rate("redis put " + key), rate("sessiond put " + key))
    print("durable write floor, 1 KiB x%d (minimal server, best of three shapes): %.0f/s (%s put %s needs %.0f/s; sessiond %.0f/s = %.0f%% of the floor)"
          % (clients, floor, bar, key, times * redis, ours, 100 * ours / (floor or 1)))
    pairs = zip(runs.get("durable write floor " + key, []), runs.get("redis put " + key, []), runs.get("sessiond put " + key, []))
    print("  each round, floor / %s / sessiond: " % bar + "; ".join("%.0f / %.0f / %.0f" % (f["ops_per_sec"], times * x["ops_per_sec"], s["ops_per_sec"]) for f, x, s in pairs))

# The write path at the machine's floor: each cell against the floor's best shape for the
# same writes and against Redis (appendfsync always), over both encodings, in this run.
print()
print("the write path against the floor (a minimal server's best of three shapes) and redis, medians:")
print("%-16s %10s %10s %10s %10s %10s %10s %10s %10s" % ("work", "binary/s", "json/s", "floor/s", "bin/floor", "json/floor", "redis/s", "bin/redis", "json/redis"))
for size, clients in ((1024, 1), (1024, 16), (65536, 1), (65536, 16)):
    key = "%d x%d" % (size, clients)
    b, j, f, x = rate("sessiond put " + key), rate("sessiond json put " + key), rate("durable write floor " + key), rate("redis put " + key)
    print("%-16s %10.0f %10.0f %10.0f %9.0f%% %9.0f%% %10.0f %9.2fx %9.2fx" % ("put " + key, b, j, f, 100 * b / (f or 1), 100 * j / (f or 1), x, b / (x or 1), j / (x or 1)))
b, j, x = rate("sessiond get 1024 x1"), rate("sessiond json get 1024 x1"), rate("redis get 1024 x1")
print("%-16s %10.0f %10.0f %10s %10s %10s %10.0f %9.2fx %9.2fx" % ("get 1024 x1", b, j, "", "", "", x, b / (x or 1), j / (x or 1)))
# What stands between a store and the floor's best shape, in the same run: the floor's shapes
# one by one (sessiond's is the second, reading while another thread flushes), and the CPU
# each server and the load generator spend on a write (a shape that flushes on its reading thread does all of it
# between two flushes, so it pays only where that is small beside a flush).
def shape(label, in_flight, key):
    xs = [run[key] for v in runs.get(label, []) for run in v.get("runs", [])
          if run.get("flushes_in_flight") == in_flight and run.get(key) is not None]
    return statistics.median(xs) if xs else 0.0
def cpu(label, key="daemon_cpu_us"):
    return r.get(label, {}).get(key, 0.0)
print("the floor's shapes, and the CPU a write costs each server (us; context switches a write) and the load generator (binary / JSON lines), medians:")
print("%-16s %12s %12s %10s %10s %22s %22s %16s %16s %14s" % ("work", "as-reads/s", "1-flight/s", "bin/1-fl", "json/1-fl", "floor as-reads cpu", "floor 1-flight cpu", "sessiond bin cpu", "sessiond json cpu", "generator cpu"))
for size, clients in ((1024, 1), (1024, 16), (65536, 1), (65536, 16)):
    key = "%d x%d" % (size, clients)
    fl = "durable write floor " + key
    a, o = shape(fl, 0, "ops_per_sec"), shape(fl, 1, "ops_per_sec")
    b, j = rate("sessiond put " + key), rate("sessiond json put " + key)
    print("%-16s %12.0f %12.0f %9.0f%% %9.0f%% %14.1f (%5.2f) %14.1f (%5.2f) %8.1f (%5.2f) %8.1f (%5.2f) %6.1f / %5.1f" % (
        "put " + key, a, o, 100 * b / (o or 1), 100 * j / (o or 1),
        shape(fl, 0, "server_cpu_us"), shape(fl, 0, "server_switches"),
        shape(fl, 1, "server_cpu_us"), shape(fl, 1, "server_switches"),
        cpu("sessiond put " + key), cpu("sessiond put " + key, "daemon_switches"),
        cpu("sessiond json put " + key), cpu("sessiond json put " + key, "daemon_switches"),
        cpu("sessiond put " + key, "client_cpu_us"), cpu("sessiond json put " + key, "client_cpu_us")))
print("%-16s %8.1f us binary, %8.1f us JSON lines (the daemon's CPU a get)" % ("get 1024 x1", cpu("sessiond get 1024 x1"), cpu("sessiond json get 1024 x1")))
print("JSON lines with the payload as raw bytes after the line (payload_len) instead of base64:")
for size, clients in ((1024, 1), (1024, 16), (65536, 1), (65536, 16)):
    key = "%d x%d" % (size, clients)
    w, f, x = rate("sessiond raw put " + key), rate("durable write floor " + key), rate("redis put " + key)
    print("%-16s %10.0f raw/s: %3.0f%% of the floor, %5.2fx redis" % ("put " + key, w, 100 * w / (f or 1), w / (x or 1)))
w, x = rate("sessiond raw get 1024 x1"), rate("redis get 1024 x1")
print("%-16s %10.0f raw/s: %5.2fx redis GET" % ("get 1024 x1", w, w / (x or 1)))
t = r.get("socket round trip", {})
for label, placed, trip in (("as placed", "sessiond get 1024 x1", t.get("p50_us")),
                            ("one cpu", "sessiond get 1024 x1 one cpu", t.get("same_cpu_p50_us")),
                            ("two cpus", "sessiond get 1024 x1 two cpus", t.get("cross_cpu_p50_us"))):
    g = r.get(placed, {}).get("p50_us")
    if g and trip:
        print("get p50, %-9s: sessiond %.1f us, bare round trip %.1f us: %.1fx" % (label, g, trip, g / trip))
j = r.get("sessiond json get 1024 x1", {}).get("p50_us")
if j and t.get("p50_us"):
    print("get p50 over JSON lines, as placed: %.1f us (%.1fx the round trip as placed)" % (j, j / t["p50_us"]))
PY
