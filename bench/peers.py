#!/usr/bin/env python3
"""The SQLite and LangGraph peers of bench/compare.sh, on the same work as sessiond-bench:
N client threads, each with its own session, writing checkpoints of SIZE bytes durably (one
transaction each) for SECONDS, or reading each session's latest checkpoint.

    peers.py sqlite|langgraph put|get --clients N --size BYTES --seconds S --dir D

Prints one JSON object: ops, ops_per_sec, p50_us, p99_us.
"""

import argparse
import json
import os
import sqlite3
import threading
import time


def percentile(sorted_lat, p):
    if not sorted_lat:
        return 0.0
    return sorted_lat[round((len(sorted_lat) - 1) * p)] * 1e6


def sqlite_worker(path, i, op, size, deadline, barrier, out):
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    payload = os.urandom(size)
    session = f"s{i}"
    conn.execute("INSERT INTO checkpoints VALUES (?, 0, ?)", (session, payload))
    lat = []
    n = 0
    barrier.wait()
    while time.perf_counter() < deadline[0]:
        t = time.perf_counter()
        if op == "put":
            n += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?)", (session, n, payload))
            conn.execute("COMMIT")
        else:
            conn.execute(
                "SELECT payload FROM checkpoints WHERE session = ? ORDER BY number DESC LIMIT 1",
                (session,),
            ).fetchone()
        lat.append(time.perf_counter() - t)
    out[i] = lat


def langgraph_worker(saver, i, op, size, deadline, barrier, out):
    from langgraph.checkpoint.base import empty_checkpoint

    config = {"configurable": {"thread_id": f"t{i}", "checkpoint_ns": ""}}

    def put():
        cp = empty_checkpoint()
        cp["channel_values"] = {"state": "x" * size}
        return saver.put(config, cp, {"source": "loop", "step": 1}, {})

    put()
    lat = []
    barrier.wait()
    while time.perf_counter() < deadline[0]:
        t = time.perf_counter()
        if op == "put":
            put()
        else:
            saver.get_tuple(config)
        lat.append(time.perf_counter() - t)
    out[i] = lat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=["sqlite", "langgraph"])
    ap.add_argument("op", choices=["put", "get"])
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    path = os.path.join(a.dir, f"{a.peer}-{a.clients}-{a.size}-{a.op}.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    out = [None] * a.clients
    deadline = [0.0]
    barrier = threading.Barrier(a.clients + 1)
    if a.peer == "sqlite":
        setup = sqlite3.connect(path)
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute(
            "CREATE TABLE checkpoints (session TEXT, number INTEGER, payload BLOB,"
            " PRIMARY KEY (session, number))"
        )
        setup.close()
        target, extra = sqlite_worker, path
    else:
        from langgraph.checkpoint.sqlite import SqliteSaver

        saver = SqliteSaver(sqlite3.connect(path, check_same_thread=False))
        saver.setup()
        target, extra = langgraph_worker, saver
    threads = [
        threading.Thread(target=target, args=(extra, i, a.op, a.size, deadline, barrier, out))
        for i in range(a.clients)
    ]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + a.seconds
    barrier.wait()
    for t in threads:
        t.join()
    lat = sorted(x for per in out for x in (per or []))
    print(
        json.dumps(
            {
                "peer": a.peer,
                "op": a.op,
                "clients": a.clients,
                "size": a.size,
                "ops": len(lat),
                "ops_per_sec": len(lat) / a.seconds,
                "p50_us": percentile(lat, 0.5),
                "p99_us": percentile(lat, 0.99),
            }
        )
    )


if __name__ == "__main__":
    main()
