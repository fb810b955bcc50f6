#!/usr/bin/env python3
"""A resumable worker using only Python's standard library and sessiond's JSON lines.

It resumes session NAME if an earlier run left it (from its latest checkpoint), or creates
it, then does STEPS steps, checkpointing its state after each. Kill it at any moment and run
it again: it carries on from the last checkpoint, and the sum comes out the same.

    python3 examples/worker_stdlib.py NAME STEPS [--sleep SECONDS] [--socket PATH]
"""

import argparse
import base64
import json
import os
import socket
import sys
import time


def default_socket():
    if os.environ.get("SESSIOND_SOCKET"):
        return os.environ["SESSIOND_SOCKET"]
    if os.geteuid() == 0:
        return "/run/sessiond/sessiond.sock"
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run:
        return os.path.join(run, "sessiond", "sessiond.sock")
    return f"/tmp/sessiond-{os.geteuid()}/sessiond.sock"


class Sessiond:
    """One JSON-lines connection: a request per line, a reply per line."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self.next_id = 0

    def call(self, op, **fields):
        self.next_id += 1
        request = dict(op=op, id=self.next_id, **fields)
        self.file.write(json.dumps(request).encode() + b"\n")
        self.file.flush()
        reply = json.loads(self.file.readline())
        if not reply["ok"]:
            raise SessiondError(reply["error"]["kind"], reply["error"]["message"])
        return reply


class SessiondError(Exception):
    def __init__(self, kind, message):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("steps", type=int)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--socket", default=default_socket())
    args = parser.parse_args()

    d = Sessiond(args.socket)
    state = {"step": 0, "sum": 0}
    try:
        reply = d.call("resume", name=args.name)
        epoch = reply["session"]["epoch"]
        if reply["checkpoint"]:
            state = json.loads(base64.b64decode(reply["checkpoint"]["payload_b64"]))
        print(f"resumed at step {state['step']} (epoch {epoch})", flush=True)
    except SessiondError as e:
        if e.kind != "not_found":
            print(f"cannot resume: {e}", file=sys.stderr)
            return 5
        epoch = d.call("create", name=args.name, meta={"kind": "example"})["session"]["epoch"]
        print("created", flush=True)

    while state["step"] < args.steps:
        state["step"] += 1
        state["sum"] += state["step"]
        time.sleep(args.sleep)
        payload = base64.b64encode(json.dumps(state).encode()).decode()
        # The epoch fences us out if someone else resumed the session meanwhile.
        d.call(
            "checkpoint",
            name=args.name,
            payload_b64=payload,
            epoch=epoch,
            meta={"step": str(state["step"])},
        )
        print(f"step {state['step']}", flush=True)

    d.call("complete", name=args.name)
    print(f"done sum={state['sum']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
