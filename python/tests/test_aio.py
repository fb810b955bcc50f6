"""The asyncio client against the real daemon."""

from __future__ import annotations

import asyncio

import pytest
from conftest import Daemon

import sessiond
from sessiond import ops


async def test_ops_errors_and_concurrency(daemon: Daemon) -> None:
    async with sessiond.AsyncClient(daemon.socket) as c:
        assert (await c.ping()).protocol == 4
        await c.create("a", detached=True, keep=0)
        # Concurrent tasks, each on a connection of its own: numbers are all different.
        written = await asyncio.gather(*[c.checkpoint("a", b"%d" % i) for i in range(32)])
        assert sorted(w.number for w in written) == list(range(1, 33))
        latest = await c.get("a")
        assert latest is not None and latest.number == 32
        with pytest.raises(sessiond.NotFound):
            await c.get("missing")
        await c.checkpoint("a", b"keyed" * 10_000, key="k")
        await c.attach("a", "w", b"pending", key="k")
        got = await c.get("a", key="k", attachments=True)
        assert got is not None and got.payload == b"keyed" * 10_000
        assert got.attachments is not None and got.attachments[0].payload == b"pending"
        assert len(await c.history("a", reverse=True, limit=3, payloads=True)) == 3
        with pytest.raises(sessiond.AlreadyExists) as e:
            await c.batch([ops.create("b", detached=True), ops.create("a")])
        assert e.value.index == 1
        assert await c.delete("b") is False
        handle = await c.resume("a")
        assert handle.epoch == 2 and handle.resumed_from is not None
        assert (await handle.checkpoint(b"next")).number == 34


async def test_watch(daemon: Daemon) -> None:
    async with sessiond.AsyncClient(daemon.socket) as c:
        kinds: list[str] = []

        async def watch() -> None:
            async for e in c.watch("w"):
                kinds.append(e.kind)
                if e.kind == "checkpointed":
                    return

        task = asyncio.create_task(watch())
        # Until the watch is registered (a second connection shows in stats).
        while (await c.stats()).connections < 2:
            await asyncio.sleep(0.01)
        await c.create("w")
        await c.checkpoint("w", b"1")
        await asyncio.wait_for(task, 20)
        assert kinds == ["created", "checkpointed"]
