#!/usr/bin/env bash
# Long run of the shared store's torture (the test suite runs 8 s of it): two daemons as two
# hosts on a throwaway PostgreSQL cluster, four writers taking three sessions from each other
# by epoch while either daemon is SIGKILLed at random moments and restarted; then every
# acknowledged checkpoint must be there byte for byte, numbers gapless, one writer per epoch.
# Prints the totals quoted in RELIABILITY.md.
#
#   scripts/shared-torture.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIOND_SHARED_TORTURE_SECS=${1:-600} exec cargo test --release --locked -p sessiond-tests \
  --test shared_torture -- --nocapture
