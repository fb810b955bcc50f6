#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need and is missing
# (Debian packages: systemd's tools for the service tests, libfiu's for the fault-injection
# tests, socat for README's JSON-lines example; as root, or through sudo; a Python
# virtualenv with the pinned test requirements),
# then runs every test: unit, protocol, end-to-end against the real binaries, crash torture,
# fault injection, and python/tests (the Python client, LangGraph's conformance suite, a
# graph killed mid-run) against the binaries just built; then the store-agnostic end-to-end
# tests and python/tests again with every daemon on PostgreSQL (a throwaway cluster the
# tests start themselves; Debian package postgresql), and the shared store's own tests (two
# hosts, leases, database faults). Extra arguments go to `cargo test`.
#
#   scripts/test.sh [CARGO TEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
if ! command -v systemd-analyze >/dev/null || ! command -v systemd-socket-activate >/dev/null; then
  need+=(systemd)
fi
command -v fiu-run >/dev/null || need+=(fiu-utils)
command -v socat >/dev/null || need+=(socat)
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo)
  else
    echo "the tests need: ${need[*]}; install them (sudo apt-get install ${need[*]}) and run again" >&2
    exit 2
  fi
  echo "== installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

venv=$(scripts/python-env.sh)

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
echo "== python/tests"
(cd python && SESSIOND_BIN="$PWD/../target/debug/sessiond" "../$venv/bin/python" -m pytest -q -p no:cacheprovider tests) 2>&1 | tee -a "$log" || status=$?
# The same end-to-end tests with the daemons on the shared store.
shared=(client framework protocol ownership service sessionctl isolation limits examples pidns cache)
echo "== on PostgreSQL: ${shared[*]} and python/tests"
SESSIOND_TEST_STORE=postgres cargo test -p sessiond-tests --locked --no-fail-fast \
  "${shared[@]/#/--test=}" 2>&1 | tee -a "$log" || status=$?
(cd python && SESSIOND_TEST_STORE=postgres SESSIOND_BIN="$PWD/../target/debug/sessiond" "../$venv/bin/python" -m pytest -q -p no:cacheprovider tests) 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole run (cargo's last line is only its last test binary's).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^[0-9]+ (passed|failed)/ || / passed in / { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
