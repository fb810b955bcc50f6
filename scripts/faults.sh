#!/usr/bin/env bash
# Long fault-injection run (the test suite runs a short one): release build, then the daemon
# under libfiu's POSIX preload with every disk call failing at random at 1 %, 5 %, 20 % and
# 50 % for SECONDS each while six clients write, and each kind of disk work failed alone;
# after each, faults off, recovery, kill -9, restart and verification. Prints the table
# quoted in RELIABILITY.md; exits non-zero at the first violation.
#
#   scripts/faults.sh [SECONDS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fiu-run >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fiu-utils >/dev/null
  else
    echo "libfiu's tools are missing: sudo apt-get install fiu-utils" >&2
    exit 2
  fi
fi
cargo build --release --locked -p sessiond -p sessiond-client -p sessiond-tests --bins
exec ./target/release/sessiond-faults --seconds "${1:-30}" --seed "${2:-$RANDOM}"
