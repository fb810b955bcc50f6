#!/usr/bin/env bash
# The virtualenv the Python tests, lints and benchmarks run in (target/python-venv), made or
# brought up to date: the pinned python/requirements-test.txt and the `sessiond` package
# from python/ with its LangGraph extra. Prints the virtualenv's path.
#
#   venv=$(scripts/python-env.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python-venv
stamp=$venv/.installed
want=$(cat python/requirements-test.txt python/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  # The package itself may have changed: reinstalling it alone is quick.
  "$venv/bin/pip" install -q --no-deps --force-reinstall ./python >&2
  echo "$venv"
  exit 0
fi
if ! python3 -m venv --clear "$venv" >&2 2>/dev/null; then
  # Debian's python3 comes without venv's pip: python3-venv has it.
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  echo "== installing python3-venv" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq >&2
  "${sudo[@]}" apt-get install -y -qq python3-venv >/dev/null
  python3 -m venv --clear "$venv" >&2
fi
echo "== setting up $venv (python/requirements-test.txt)" >&2
"$venv/bin/pip" install -q --upgrade pip >&2
"$venv/bin/pip" install -q -r python/requirements-test.txt >&2
"$venv/bin/pip" install -q --no-deps ./python >&2
rm -rf python/build python/src/*.egg-info
echo "$want" > "$stamp"
echo "$venv"
