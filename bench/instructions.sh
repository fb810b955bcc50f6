#!/usr/bin/env bash
# CPU per request counted in instructions, which stay the same on a busy machine (hardware
# counters are not available here): the server runs under `valgrind --tool=callgrind`, serves
# the load, and is stopped; a run that starts it, leaves it idle as long and stops it is
# subtracted; the rest is divided by the requests served. sessiond (binary protocol and JSON
# lines, durable 1 KiB checkpoints and get-latest, one client) against Redis (appendfsync
# always: SET, GET), measured the same way in the same run. Installs what it needs (valgrind, redis via apt).
#
#   bench/instructions.sh            (SECONDS_PER=10 of load under callgrind per cell)
#   CALLGRIND_DIR=DIR bench/instructions.sh   (keeps each cell's callgrind.out in DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER:-10}
work=$(mktemp -d /var/tmp/sessiond-instructions.XXXXXX)
server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT

need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || need+=(redis-server redis-tools)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "== building (release, with symbols for callgrind)" >&2
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --locked -q -p sessiond -p sessiond-tests --bins
bench=./target/release/sessiond-bench

# The instructions callgrind counted for the whole run (every thread).
total() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }

wait_for() { # a test command, tried for up to 60 s (valgrind starts slowly)
  for _ in $(seq 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "server did not come up" >&2; exit 1
}

# sessiond under callgrind; $1 = label, then sessiond-bench checkpoint's flags for one client's
# 1 KiB load (none: no load). Prints "label instructions requests".
sessiond_cell() {
  local label=$1; shift
  local dir=$work/$label
  mkdir -p "$dir"
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    ./target/release/sessiond --socket "$dir/s.sock" --state-dir "$dir/state" 2>"$dir/valgrind.log" &
  server_pid=$!
  wait_for test -S "$dir/s.sock"
  local ops=0
  if [ $# -gt 0 ]; then
    ops=$("$bench" checkpoint --clients 1 --size 1024 --seconds "$secs" "$@" --socket "$dir/s.sock" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ops"])')
  else
    # Idle as long as a loaded cell runs: what the daemon does by the clock (timers, upkeep)
    # is subtracted with its start and stop, whatever the disk let the load get through.
    sleep "$secs"
  fi
  stop_server
  echo "$label $(total "$dir/callgrind.out") $ops"
}

redis_cell() { # label, then set or get (none: no load) -> "label instructions requests"
  local label=$1 test=${2:-}
  local dir=$work/$label requests=$(( secs * 600 ))
  mkdir -p "$dir"
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    redis-server --port 0 --unixsocket "$dir/redis.sock" --unixsocketperm 700 --dir "$dir" \
    --appendonly yes --appendfsync always --save "" 2>"$dir/valgrind.log" >/dev/null &
  server_pid=$!
  wait_for redis-cli -s "$dir/redis.sock" ping
  local ops=0
  [ -z "$test" ] && sleep "$secs"
  if [ -n "$test" ]; then
    # A GET reads what a SET wrote first (redis-benchmark's key space), as sessiond's get does.
    [ "$test" = get ] && redis-benchmark -s "$dir/redis.sock" -t set -d 1024 -c 1 -n 1 -q >/dev/null
    redis-benchmark -s "$dir/redis.sock" -t "$test" -d 1024 -c 1 -n "$requests" -q >/dev/null
    ops=$requests
    [ "$test" = get ] && ops=$(( requests + 1 ))
  fi
  redis-cli -s "$dir/redis.sock" shutdown nosave >/dev/null 2>&1 || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
  echo "$label $(total "$dir/callgrind.out") $ops"
}

results=$work/results.txt
{
  echo "== sessiond, idle" >&2;            sessiond_cell sessiond-idle
  echo "== sessiond put, binary" >&2;      sessiond_cell sessiond-put-binary --encoding binary
  echo "== sessiond put, JSON lines" >&2;  sessiond_cell sessiond-put-json --encoding json
  echo "== sessiond get, binary" >&2;      sessiond_cell sessiond-get-binary --encoding binary --mix get
  echo "== sessiond get, JSON lines" >&2;  sessiond_cell sessiond-get-json --encoding json --mix get
  echo "== redis, idle" >&2;               redis_cell redis-idle
  echo "== redis SET" >&2;                 redis_cell redis-set set
  echo "== redis GET" >&2;                 redis_cell redis-get get
} > "$results"
if [ -n "${CALLGRIND_DIR:-}" ]; then
  mkdir -p "$CALLGRIND_DIR"
  for f in "$work"/*/callgrind.out; do cp "$f" "$CALLGRIND_DIR/$(basename "$(dirname "$f")").out"; done
fi

python3 - "$results" <<'PY'
import sys
cells = {}
for line in open(sys.argv[1]):
    label, ir, ops = line.split()
    cells[label] = (int(ir.replace(",", "")), int(ops))
def per_request(label, idle):
    ir, ops = cells[label]
    return (ir - cells[idle][0]) / ops if ops else float("nan")
redis_set = per_request("redis-set", "redis-idle")
redis_get = per_request("redis-get", "redis-idle")
print("instructions per request (callgrind; an idle run of as many seconds subtracted)")
print("%-32s %12s %10s %s" % ("work", "instructions", "requests", "vs redis"))
for label, peer, peer_ir in (("sessiond-put-binary", "SET", redis_set), ("sessiond-put-json", "SET", redis_set),
                             ("sessiond-get-binary", "GET", redis_get), ("sessiond-get-json", "GET", redis_get)):
    ir = per_request(label, "sessiond-idle")
    print("%-32s %12.0f %10d %.2fx redis %s" % (label, ir, cells[label][1], ir / peer_ir, peer))
print("%-32s %12.0f %10d" % ("redis-set (appendfsync always)", redis_set, cells["redis-set"][1]))
print("%-32s %12.0f %10d" % ("redis-get", redis_get, cells["redis-get"][1]))
PY
