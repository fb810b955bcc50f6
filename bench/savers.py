"""LangGraph checkpointers side by side: SessiondSaver against LangGraph's SqliteSaver and
PostgresSaver.

    python bench/savers.py put --saver sessiond|sqlite|postgres|floor --threads N
        --size BYTES --seconds S --socket PATH --dir DIR --pg-url URL
    python bench/savers.py get --saver sessiond|sqlite|postgres --checkpoints 1000 ...
    python bench/savers.py alternate --size BYTES --seconds S --socket PATH --dir DIR

put: one saver instance shared by every thread (as a compiled graph shares its
checkpointer), each thread writing checkpoints of its own LangGraph thread, each holding a
channel value of SIZE bytes: ops/s over the window. get: a thread of CHECKPOINTS checkpoints;
`get_tuple` of a checkpoint by its id (a random one each time) and of the latest, one after
the other: p50 of each. alternate: on one thread, twenty floor requests, twenty
SessiondSaver.put and twenty SqliteSaver.put, one block after the other over and over (so
that all three meet the same disk from moment to moment, where runs one after the other
meet a disk whose flush time moves by 2x within minutes): p50 of each. Prints one JSON object.

SqliteSaver runs on a file in DIR in WAL mode (synchronous=FULL, SQLite's default: each
commit is durable), as its docs set it up for threads (check_same_thread=False).
PostgresSaver runs on the database at --pg-url as its docs set it up (autocommit,
prepare_threshold=0, dict rows): on one connection for one thread, on a psycopg pool with a
connection per thread otherwise.

`--saver floor` is what no Python client of any daemon can beat on this machine: each
thread sends an already-encoded checkpoint request of the same size on a raw socket and
waits for the daemon's durable acknowledgement (polling for it first as the client does),
with no serialization, no framework and no client library around it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import sqlite3
import statistics
import threading
import time
import uuid
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver, empty_checkpoint
from langgraph.checkpoint.sqlite import SqliteSaver

from sessiond.client import DEFAULT_POLL_WINDOW as POLL_WINDOW
from sessiond.langgraph import SessiondSaver


def postgres_saver(a: argparse.Namespace) -> BaseCheckpointSaver[Any]:
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg import Connection
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    if a.threads == 1:
        conn: Any = Connection.connect(a.pg_url, **kwargs)
    else:
        conn = ConnectionPool(a.pg_url, min_size=a.threads, max_size=a.threads, kwargs=kwargs)
        conn.wait()
    saver = PostgresSaver(conn)
    saver.setup()
    return saver


def make_saver(a: argparse.Namespace, tag: str) -> BaseCheckpointSaver[Any]:
    if a.saver == "sessiond":
        return SessiondSaver(a.socket)
    if a.saver == "postgres":
        return postgres_saver(a)
    path = os.path.join(a.dir, f"savers-{tag}-{uuid.uuid4().hex}.db")
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    saver = SqliteSaver(conn)
    saver.setup()
    return saver


def checkpoint(size: int) -> Any:
    cp = empty_checkpoint()
    cp["channel_values"] = {"state": "x" * size}
    cp["channel_versions"] = {"state": 1}
    return cp


class FloorWriter:
    """A raw socket sending one already-encoded checkpoint request of SIZE bytes (JSON line,
    payload after it) to a session of its own, and waiting for the durable acknowledgement:
    nothing of a client library around it."""

    def __init__(self, path: str, name: str, size: int, poll: bool) -> None:
        import socket

        import sessiond

        sessiond.Client(path).create(name, detached=True, keep=16)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")
        self.poll_window = POLL_WINDOW if poll else 0.0
        self.quick = poll
        self.readable = select.poll()
        self.readable.register(self.sock, select.POLLIN)
        payload = b"x" * (size + 200)
        head = {"op": "checkpoint", "id": 1, "name": name, "payload_len": len(payload)}
        self.request = json.dumps(head).encode() + b"\n" + payload

    def write(self) -> None:
        self.sock.sendall(self.request)
        # As sessiond.Client does with one call in flight: poll for the reply a moment
        # before sleeping on it (a sleeping thread pays its CPU's wake-up), while replies
        # come within the window.
        started = time.perf_counter()
        if self.quick:
            until = started + self.poll_window
            while not self.readable.poll(0) and time.perf_counter() < until:
                pass
        if not self.reader.readline().startswith(b'{"id":1,"ok":true'):
            raise RuntimeError("the daemon refused a checkpoint")
        self.quick = time.perf_counter() - started < self.poll_window


def floor(a: argparse.Namespace) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    counts = [0] * a.threads
    barrier = threading.Barrier(a.threads + 1)
    stop = threading.Event()

    def work(i: int) -> None:
        writer = FloorWriter(a.socket, f"floor-{run}-{i}", a.size, poll=a.threads == 1)
        barrier.wait()
        n = 0
        while not stop.is_set():
            writer.write()
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=work, args=(i,)) for i in range(a.threads)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(a.seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "op": "put",
        "saver": "floor",
        "threads": a.threads,
        "size": a.size,
        "ops_per_sec": sum(counts) / elapsed,
    }


def put(a: argparse.Namespace) -> dict[str, Any]:
    if a.saver == "floor":
        return floor(a)
    saver = make_saver(a, "put")
    run = uuid.uuid4().hex[:8]
    counts = [0] * a.threads
    barrier = threading.Barrier(a.threads + 1)
    stop = threading.Event()

    def work(i: int) -> None:
        config: Any = {"configurable": {"thread_id": f"bench-{run}-{i}", "checkpoint_ns": ""}}
        saver.put(config, checkpoint(a.size), {"source": "loop", "step": 0}, {})
        barrier.wait()
        n = 0
        while not stop.is_set():
            n += 1
            config = saver.put(config, checkpoint(a.size), {"source": "loop", "step": n}, {})
        counts[i] = n

    threads = [threading.Thread(target=work, args=(i,)) for i in range(a.threads)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(a.seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "op": "put",
        "saver": a.saver,
        "threads": a.threads,
        "size": a.size,
        "ops_per_sec": sum(counts) / elapsed,
    }


# Writes each in a row before the next takes its turn in `alternate`: a program writes
# checkpoint after checkpoint, and a store that keeps a connection warm between them (the
# daemon polls a quick client's socket) should be met as such, not after two other stores'
# writes each time; twenty in a row still meet the same disk within milliseconds.
BLOCK = 20


def alternate(a: argparse.Namespace) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    writer = FloorWriter(a.socket, f"floor-{run}", a.size, poll=True)
    a.saver = "sessiond"
    ours = make_saver(a, "alternate")
    a.saver = "sqlite"
    theirs = make_saver(a, "alternate")
    configs: list[Any] = [
        {"configurable": {"thread_id": f"bench-{run}-{i}", "checkpoint_ns": ""}} for i in (0, 1)
    ]

    def put_ours(n: int) -> None:
        configs[0] = ours.put(configs[0], checkpoint(a.size), {"source": "loop", "step": n}, {})

    def put_theirs(n: int) -> None:
        configs[1] = theirs.put(configs[1], checkpoint(a.size), {"source": "loop", "step": n}, {})

    steps = (lambda n: writer.write(), put_ours, put_theirs)
    times: list[list[float]] = [[], [], []]
    deadline = time.perf_counter() + a.seconds
    n = 0
    while time.perf_counter() < deadline:
        n += 1
        for i, step in enumerate(steps):
            for j in range(BLOCK):
                t = time.perf_counter()
                step(n * BLOCK + j)
                times[i].append(time.perf_counter() - t)
    floor_us, sessiond_us, sqlite_us = (statistics.median(t) * 1e6 for t in times)
    return {
        "op": "alternate",
        "size": a.size,
        "rounds": n,
        "floor_p50_us": floor_us,
        "sessiond_p50_us": sessiond_us,
        "sqlite_p50_us": sqlite_us,
    }


def get(a: argparse.Namespace) -> dict[str, Any]:
    saver = make_saver(a, "get")
    thread = f"bench-get-{uuid.uuid4().hex[:8]}"
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    ids = []
    for n in range(a.checkpoints):
        config = saver.put(config, checkpoint(a.size), {"source": "loop", "step": n}, {})
        ids.append(config["configurable"]["checkpoint_id"])
    latest_config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    by_id, latest = [], []
    deadline = time.perf_counter() + a.seconds
    while time.perf_counter() < deadline:
        cid = random.choice(ids)
        cfg: Any = {"configurable": {**latest_config["configurable"], "checkpoint_id": cid}}
        t = time.perf_counter()
        tup = saver.get_tuple(cfg)
        by_id.append(time.perf_counter() - t)
        assert tup is not None and tup.config["configurable"]["checkpoint_id"] == cid
        t = time.perf_counter()
        tup = saver.get_tuple(latest_config)
        latest.append(time.perf_counter() - t)
        assert tup is not None and tup.config["configurable"]["checkpoint_id"] == ids[-1]
    p50_id, p50_latest = statistics.median(by_id) * 1e6, statistics.median(latest) * 1e6
    return {
        "op": "get",
        "saver": a.saver,
        "checkpoints": a.checkpoints,
        "size": a.size,
        "by_id_p50_us": p50_id,
        "latest_p50_us": p50_latest,
        "by_id_over_latest": p50_id / p50_latest,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("op", choices=["put", "get", "alternate"])
    ap.add_argument("--saver", choices=["sessiond", "sqlite", "postgres", "floor"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--checkpoints", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--socket", default=None)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--pg-url", default=None)
    a = ap.parse_args()
    if a.op != "alternate" and a.saver is None:
        ap.error(f"{a.op} needs --saver")
    ops = {"put": put, "get": get, "alternate": alternate}
    print(json.dumps(ops[a.op](a)))


if __name__ == "__main__":
    main()
