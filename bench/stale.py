"""Stale detection after a host's death, on a shared PostgreSQL store.

    python bench/stale.py --sessiond BIN --store URL --dir DIR [--sessions 100]
        [--lease-interval 1s --lease-ttl 5s]

Two daemons on one database as two hosts, A and B. A owns SESSIONS sessions (each owned by
a process of its own, all alive); B watches them. A is killed with SIGKILL (the host's
death, as far as the store can tell), and the time from the kill to B's stale event of each
session is measured: p50, p99 and max, against the bound ttl + interval + 1 s. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import sessiond


def seconds(text: str) -> float:
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    return float(text.rstrip("s"))


def start(a: argparse.Namespace, host: str) -> tuple[subprocess.Popen[bytes], str]:
    root = Path(a.dir) / host
    root.mkdir(parents=True, exist_ok=True)
    sock = str(root / "sessiond.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    with open(root / "sessiond.log", "wb") as log:
        proc = subprocess.Popen(
            [
                a.sessiond,
                "--socket",
                sock,
                "--state-dir",
                str(root / "state"),
                "--store",
                a.store,
                "--host-id",
                host,
                "--lease-interval",
                a.lease_interval,
                "--lease-ttl",
                a.lease_ttl,
            ],
            stdout=log,
            stderr=log,
            env=env,
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            sessiond.Client(sock, timeout=1).ping()
            return proc, sock
        except sessiond.ConnectionFailed as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sessiond {host} did not start: see {root}/sessiond.log") from e
            time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessiond", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--lease-interval", default="1s")
    ap.add_argument("--lease-ttl", default="5s")
    a = ap.parse_args()

    proc_a, sock_a = start(a, "bench-host-a")
    proc_b, sock_b = start(a, "bench-host-b")
    owners = [subprocess.Popen(["sleep", "1000"]) for _ in range(a.sessions)]
    run = os.urandom(4).hex()
    names = [f"stale-{run}-{i}" for i in range(a.sessions)]
    with sessiond.Client(sock_a) as ca:
        for name, owner in zip(names, owners, strict=True):
            session = ca.create(name, owner_pid=owner.pid)
            # Written by the bench, not the owner: the epoch says it may.
            ca.checkpoint(name, b"x" * 1024, epoch=session.epoch)

    seen: dict[str, float] = {}
    watching = threading.Event()
    done = threading.Event()

    def watch() -> None:
        w = sessiond.Client(sock_b).watch()
        watching.set()
        for event in w:
            if event.kind == "stale" and event.name in names:
                seen.setdefault(event.name, time.monotonic())
                if len(seen) == len(names):
                    break
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    watching.wait(10)
    killed = time.monotonic()
    proc_a.send_signal(signal.SIGKILL)
    proc_a.wait()
    bound = seconds(a.lease_ttl) + seconds(a.lease_interval) + 1.0
    done.wait(bound + 30)
    for o in owners:
        o.kill()
        o.wait()
    proc_b.send_signal(signal.SIGTERM)
    proc_b.wait(30)
    delays = sorted(t - killed for t in seen.values())
    result: dict[str, Any] = {
        "op": "stale_after_host_death",
        "sessions": a.sessions,
        "seen_stale": len(delays),
        "lease_interval": a.lease_interval,
        "lease_ttl": a.lease_ttl,
        "bound_s": bound,
    }
    if delays:
        result |= {
            "p50_s": delays[len(delays) // 2],
            "p99_s": delays[min(len(delays) - 1, int(len(delays) * 0.99))],
            "max_s": delays[-1],
        }
        result["within_bound"] = len(delays) == a.sessions and result["p99_s"] <= bound
    print(json.dumps(result))


if __name__ == "__main__":
    main()
