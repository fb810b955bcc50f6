#!/usr/bin/env bash
# A resumable worker in shell with sessionctl. It resumes session NAME from its latest
# checkpoint (or creates it) and does STEPS steps, checkpointing "step sum" after each. The
# session is owned by this script: kill it and the session goes stale; run it again and it
# carries on.
#
#   examples/worker.sh NAME STEPS        (SLEEP=0.01 to slow it down)
set -euo pipefail
name=${1:?usage: worker.sh NAME STEPS}
steps=${2:?usage: worker.sh NAME STEPS}

set +e
state=$(sessionctl resume "$name" 2>/dev/null)
rc=$?
set -e
case $rc in
  0) echo "resumed at step ${state%% *}" ;;
  3) sessionctl create "$name" --meta kind=example >/dev/null; state=""; echo "created" ;;
  *) echo "cannot resume $name (exit $rc)" >&2; exit "$rc" ;;
esac
read -r step sum <<<"${state:-0 0}"

while (( step < steps )); do
  step=$((step + 1))
  sum=$((sum + step))
  sleep "${SLEEP:-0}"
  printf '%s %s' "$step" "$sum" | sessionctl checkpoint "$name" --meta "step=$step" >/dev/null
  echo "step $step"
done
sessionctl complete "$name" >/dev/null
echo "done sum=$sum"
