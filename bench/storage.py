"""What an agent's checkpoints take on disk: sessiond against LangGraph's SqliteSaver on the
same states, and random payloads.

    python bench/storage.py --socket PATH --sqlite-dir DIR [--sessions 16] [--steps 200]
        [--pg-url URL]   (the daemon's database, when its store is PostgreSQL)

The agent-like workload: each session's state is a JSON document (a few small fields that
change every step, and a list of messages that grows by one 2 KiB text message per step),
checkpointed whole at every step, every checkpoint kept. sessiond gets the document's bytes;
SqliteSaver gets the same document as a checkpoint's channel values (which it serializes
itself). Every sessiond checkpoint is read back and compared byte for byte. Then random
(incompressible, unique) 64 KiB payloads. With `--pg-url`, what the database grew by with
each (after VACUUM). Prints one JSON object; bench/chunks.sh adds what the state directory
takes once the daemon has stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import time
from typing import Any

from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.sqlite import SqliteSaver

import sessiond

WORDS = [
    "the",
    "agent",
    "called",
    "a",
    "tool",
    "to",
    "search",
    "for",
    "the",
    "latest",
    "figures",
    "and",
    "then",
    "wrote",
    "a",
    "short",
    "summary",
    "of",
    "what",
    "it",
    "found,",
    "with",
    "the",
    "sources",
    "it",
    "used",
    "and",
    "what",
    "it",
    "plans",
    "to",
    "do",
    "next",
    "step",
    "by",
    "step",
]


def message(rng: random.Random, size: int) -> str:
    out: list[str] = []
    n = 0
    while n < size:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:size]


def state(session: int, step: int, messages: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "session": session,
        "step": step,
        "tokens": step * 517,
        "updated_at": 1_764_000_000 + step,
        "status": "running",
        "messages": messages,
    }


def agent(a: argparse.Namespace) -> dict[str, Any]:
    client = sessiond.Client(a.socket)
    db = os.path.join(a.sqlite_dir, "sqlite-saver.db")
    conn = sqlite3.connect(db, check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    rng = random.Random(20261202)
    logical = 0
    written: dict[str, list[bytes]] = {}
    started = time.monotonic()
    for s in range(a.sessions):
        name = f"agent-{s}"
        client.create(name, keep=0, detached=True)
        config: Any = {"configurable": {"thread_id": name, "checkpoint_ns": ""}}
        messages: list[dict[str, str]] = []
        written[name] = []
        for step in range(1, a.steps + 1):
            role = "assistant" if step % 2 else "user"
            messages.append({"role": role, "content": message(rng, 2048)})
            doc = state(s, step, messages)
            payload = json.dumps(doc, separators=(",", ":")).encode()
            logical += len(payload)
            client.checkpoint(name, payload)
            written[name].append(payload)
            cp = empty_checkpoint()
            cp["channel_values"] = doc
            config = saver.put(config, cp, {"source": "loop", "step": step}, {})
    took = time.monotonic() - started
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    sqlite_bytes = sum(
        os.path.getsize(db + ext) for ext in ("", "-wal", "-shm") if os.path.exists(db + ext)
    )
    identical = 0
    for name, payloads in written.items():
        got = [c.payload for c in client.history(name, payloads=True)]
        if got != payloads:
            raise SystemExit(f"{name}: checkpoints read back differ from what was written")
        identical += len(got)
    stats = client.stats()
    return {
        "sessions": a.sessions,
        "steps": a.steps,
        "logical_bytes": logical,
        "sessiond_stored_bytes": stats.stored_bytes,
        "sqlite_saver_bytes": sqlite_bytes,
        "read_back_identical": identical,
        "seconds": round(took, 1),
    }


def random_payloads(a: argparse.Namespace) -> dict[str, Any]:
    client = sessiond.Client(a.socket)
    before = client.stats()
    logical = 0
    for s in range(a.sessions):
        name = f"random-{s}"
        client.create(name, keep=0, detached=True)
        for _ in range(a.random_steps):
            payload = os.urandom(65536)
            logical += len(payload)
            client.checkpoint(name, payload)
    after = client.stats()
    return {
        "logical_bytes": logical,
        "stored_bytes": after.stored_bytes - before.stored_bytes,
    }


def database_bytes(url: str | None) -> int | None:
    """The database's size on disk after VACUUM (dead rows' space given back to it)."""
    if url is None:
        return None
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM")
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--sqlite-dir", required=True)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--random-steps", type=int, default=50)
    p.add_argument("--pg-url", default=None)
    a = p.parse_args()
    before = database_bytes(a.pg_url)
    agent_run = agent(a)
    after_agent = database_bytes(a.pg_url)
    random_run = random_payloads(a)
    after_random = database_bytes(a.pg_url)
    if before is not None and after_agent is not None and after_random is not None:
        agent_run["database_growth_bytes"] = after_agent - before
        random_run["database_growth_bytes"] = after_random - after_agent
    print(json.dumps({"agent": agent_run, "random": random_run}))


if __name__ == "__main__":
    main()
