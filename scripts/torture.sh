#!/usr/bin/env bash
# Long crash-torture run (the test suite runs a short one): release build, then N rounds of
# concurrent writers, SIGKILL at a random moment, restart and strict verification, with a
# damaged copy of the state directory checked every few rounds. Prints the totals quoted in
# RELIABILITY.md; exits non-zero at the first violation, naming the round and the seed.
#
#   scripts/torture.sh [ROUNDS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p sessiond -p sessiond-client -p sessiond-tests --bins
exec ./target/release/sessiond-torture --rounds "${1:-1000}" --seed "${2:-$RANDOM}"
