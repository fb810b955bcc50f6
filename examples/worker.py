#!/usr/bin/env python3
"""A resumable worker on the `sessiond` Python package (pip install ./python).

It resumes session NAME if an earlier run left it (from its latest checkpoint), or creates
it, then does STEPS steps, checkpointing its state after each. Kill it at any moment and run
it again: it carries on from the last checkpoint, and the sum comes out the same.
(worker_stdlib.py does the same with Python's standard library alone, over raw JSON lines.)

    python3 examples/worker.py NAME STEPS [--sleep SECONDS] [--socket PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import sessiond


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("steps", type=int)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--socket", default=None, help="default: as the daemon resolves it")
    args = parser.parse_args()

    client = sessiond.Client(args.socket)
    state = {"step": 0, "sum": 0}
    try:
        job = client.resume(args.name)
        if job.resumed_from is not None and job.resumed_from.payload is not None:
            state = json.loads(job.resumed_from.payload)
        print(f"resumed at step {state['step']} (epoch {job.epoch})", flush=True)
    except sessiond.NotFound:
        client.create(args.name, meta={"kind": "example"})
        job = client.session(args.name)
        print("created", flush=True)
    except sessiond.Error as e:
        print(f"cannot resume: {e}", file=sys.stderr)
        return 5

    while state["step"] < args.steps:
        state["step"] += 1
        state["sum"] += state["step"]
        time.sleep(args.sleep)
        # The handle's epoch fences us out if someone else resumed the session meanwhile.
        job.checkpoint(json.dumps(state).encode(), meta={"step": str(state["step"])})
        print(f"step {state['step']}", flush=True)

    job.complete()
    print(f"done sum={state['sum']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
