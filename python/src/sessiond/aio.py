"""The asyncio client: the same ops as :class:`sessiond.Client`, each a coroutine; a pool
of connections so that concurrent tasks each have one for their request and reply."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

from . import _wire, ops
from ._errors import ConnectionFailed, Error, ProtocolError
from ._types import Attached, Checkpoint, Event, Pong, Session, Stats
from .client import DEFAULT_TIMEOUT
from .ops import CheckpointRef, Op, Payload

T = TypeVar("T")

#: Longest line a reply may be (a history of many checkpoints' descriptions).
_LINE_LIMIT = 1 << 30


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.next_id = 0

    @classmethod
    async def open(cls, path: str) -> _Connection:
        untrusted = _wire.untrusted_socket_dir(path)
        if untrusted is not None:
            raise ConnectionFailed(untrusted)
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=_LINE_LIMIT)
        except OSError as e:
            raise ConnectionFailed(
                f"cannot connect to sessiond at {path}: {e} "
                "(is the daemon running? start it with `sessiond`)"
            ) from None
        return cls(reader, writer)

    async def send(self, op: Op[Any]) -> int:
        self.next_id += 1
        self.writer.writelines(_wire.request_parts(op, self.next_id))
        await self.writer.drain()
        return self.next_id

    async def receive(self, request_id: int, op: Op[T]) -> T:
        line = await self.reader.readline()
        if not line.endswith(b"\n"):
            raise ConnectionFailed("the daemon closed the connection")
        if op.parse is ops.ignore_body and _wire.succeeded(line, request_id):
            return None  # type: ignore[return-value]
        reply, places = _wire.parse_reply(line, request_id, op)
        try:
            payloads = [await self.reader.readexactly(n) for _, n in places]
        except asyncio.IncompleteReadError:
            raise ConnectionFailed("the daemon closed the connection mid-reply") from None
        result: T = _wire.finish_reply(reply, places, payloads, op)
        return result

    def close(self) -> None:
        self.writer.close()


class AsyncClient:
    """An asyncio client of sessiond; see :class:`sessiond.Client` for the ops."""

    def __init__(self, socket: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT):
        self.socket = socket or _wire.default_socket()
        self.timeout = timeout
        self._idle: list[_Connection] = []

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    async def run(self, op: Op[T]) -> T:
        """Sends one op and returns what its reply says."""
        if self.timeout is None:
            return await self._run(op)
        try:
            return await asyncio.wait_for(self._run(op), self.timeout)
        except asyncio.TimeoutError:
            raise ConnectionFailed(f"sessiond did not answer within {self.timeout}s") from None

    async def _run(self, op: Op[T]) -> T:
        conn = self._idle.pop() if self._idle else None
        fresh = conn is None
        if conn is None:
            conn = await _Connection.open(self.socket)
        try:
            try:
                request_id = await conn.send(op)
            except OSError:
                if fresh:
                    raise
                # An idle connection the daemon closed (it restarted): nothing was sent.
                conn.close()
                conn = await _Connection.open(self.socket)
                request_id = await conn.send(op)
            result = await conn.receive(request_id, op)
        except (ConnectionFailed, ProtocolError):
            conn.close()
            raise
        except OSError as e:
            conn.close()
            raise ConnectionFailed(f"lost the connection to sessiond: {e}") from None
        except Error:
            self._idle.append(conn)
            raise
        except BaseException:
            # Cancelled mid-request: the reply may still come, so the connection goes.
            conn.close()
            raise
        self._idle.append(conn)
        return result

    async def ping(self) -> Pong:
        return await self.run(ops.ping())

    async def create(
        self,
        name: str,
        *,
        keep: int | None = None,
        meta: Mapping[str, str] | None = None,
        owner_pid: int | None = None,
        detached: bool = False,
        owner_parent: bool = False,
    ) -> Session:
        return await self.run(
            ops.create(
                name,
                keep=keep,
                meta=meta,
                owner_pid=owner_pid,
                detached=detached,
                owner_parent=owner_parent,
            )
        )

    async def checkpoint(
        self,
        name: str,
        payload: Payload,
        *,
        meta: Mapping[str, str] | None = None,
        expect: int | None = None,
        epoch: int | None = None,
        key: str | None = None,
    ) -> Checkpoint:
        return await self.run(
            ops.checkpoint(name, payload, meta=meta, expect=expect, epoch=epoch, key=key)
        )

    async def resume(
        self,
        name: str,
        *,
        owner_pid: int | None = None,
        force: bool = False,
        attachments: bool = False,
    ) -> AsyncSessionHandle:
        r = await self.run(
            ops.resume(name, owner_pid=owner_pid, force=force, attachments=attachments)
        )
        return AsyncSessionHandle(self, r.session, r.checkpoint)

    async def session(self, name: str) -> AsyncSessionHandle:
        return AsyncSessionHandle(self, await self.show(name), None)

    async def get(
        self,
        name: str,
        *,
        number: int | None = None,
        key: str | None = None,
        attachments: bool = False,
    ) -> Checkpoint | None:
        return await self.run(ops.get(name, number=number, key=key, attachments=attachments))

    async def show(self, name: str) -> Session:
        return await self.run(ops.show(name))

    async def list(
        self,
        *,
        status: str | None = None,
        meta: Mapping[str, str] | None = None,
        all_users: bool = False,
        prefix: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Session]:
        return await self.run(
            ops.list_sessions(
                status=status,
                meta=meta,
                all_users=all_users,
                prefix=prefix,
                after=after,
                limit=limit,
            )
        )

    async def history(
        self,
        name: str,
        *,
        meta: Mapping[str, str] | None = None,
        before: CheckpointRef | None = None,
        after: CheckpointRef | None = None,
        limit: int | None = None,
        reverse: bool = False,
        payloads: bool = False,
        attachments: bool = False,
    ) -> builtins.list[Checkpoint]:
        return await self.run(
            ops.history(
                name,
                meta=meta,
                before=before,
                after=after,
                limit=limit,
                reverse=reverse,
                payloads=payloads,
                attachments=attachments,
            )
        )

    async def pause(self, name: str) -> Session:
        return await self.run(ops.pause(name))

    async def complete(self, name: str) -> Session:
        return await self.run(ops.complete(name))

    async def cancel(self, name: str) -> Session:
        return await self.run(ops.cancel(name))

    async def fail(self, name: str, error: str | None = None) -> Session:
        return await self.run(ops.fail(name, error))

    async def delete(self, name: str) -> bool:
        return await self.run(ops.delete(name))

    async def delete_matching(self, session_meta: Mapping[str, str]) -> int:
        return await self.run(ops.delete_matching(session_meta))

    async def attach(
        self,
        name: str,
        attach_key: str,
        payload: Payload,
        *,
        number: int | None = None,
        key: str | None = None,
        meta: Mapping[str, str] | None = None,
        replace: bool = False,
        epoch: int | None = None,
    ) -> Attached:
        return await self.run(
            ops.attach(
                name,
                attach_key,
                payload,
                number=number,
                key=key,
                meta=meta,
                replace=replace,
                epoch=epoch,
            )
        )

    async def delete_checkpoints(
        self,
        name: str | None = None,
        *,
        session_meta: Mapping[str, str] | None = None,
        numbers: Sequence[int] | None = None,
        keys: Sequence[str] | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> int:
        return await self.run(
            ops.delete_checkpoints(
                name, session_meta=session_meta, numbers=numbers, keys=keys, meta=meta
            )
        )

    async def prune(
        self,
        name: str | None = None,
        *,
        keep: int,
        session_meta: Mapping[str, str] | None = None,
    ) -> int:
        return await self.run(ops.prune(name, keep=keep, session_meta=session_meta))

    async def copy(self, name: str, to: str, *, meta: Mapping[str, str] | None = None) -> Session:
        return await self.run(ops.copy(name, to, meta=meta))

    async def batch(self, batch_ops: Sequence[Op[Any]]) -> builtins.list[Any]:
        return await self.run(ops.batch(batch_ops))

    async def stats(self) -> Stats:
        return await self.run(ops.stats())

    async def watch(self, name: str | None = None) -> AsyncIterator[Event]:
        """Events as they happen, on a connection of their own, until the iteration stops."""
        conn = await _Connection.open(self.socket)
        try:
            fields: dict[str, Any] = {"op": "watch"}
            if name is not None:
                fields["name"] = name
            op: Op[bool] = Op(fields, (), lambda r: bool(r.get("watching")))
            await conn.receive(await conn.send(op), op)
            while True:
                line = await conn.reader.readline()
                if not line:
                    return
                yield _wire.event(line)
        finally:
            conn.close()


class AsyncSessionHandle:
    """:class:`sessiond.client.SessionHandle` for the asyncio client."""

    def __init__(self, client: AsyncClient, info: Session, resumed_from: Checkpoint | None):
        self.client = client
        self.info = info
        self.resumed_from = resumed_from

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def epoch(self) -> int:
        return self.info.epoch

    async def checkpoint(
        self,
        payload: Payload,
        *,
        meta: Mapping[str, str] | None = None,
        expect: int | None = None,
        key: str | None = None,
    ) -> Checkpoint:
        return await self.client.checkpoint(
            self.name, payload, meta=meta, expect=expect, epoch=self.epoch, key=key
        )

    async def attach(
        self,
        attach_key: str,
        payload: Payload,
        *,
        number: int | None = None,
        key: str | None = None,
        meta: Mapping[str, str] | None = None,
        replace: bool = False,
    ) -> Attached:
        return await self.client.attach(
            self.name,
            attach_key,
            payload,
            number=number,
            key=key,
            meta=meta,
            replace=replace,
            epoch=self.epoch,
        )

    async def pause(self) -> Session:
        self.info = await self.client.pause(self.name)
        return self.info

    async def complete(self) -> Session:
        self.info = await self.client.complete(self.name)
        return self.info

    async def cancel(self) -> Session:
        self.info = await self.client.cancel(self.name)
        return self.info

    async def fail(self, error: str | None = None) -> Session:
        self.info = await self.client.fail(self.name, error)
        return self.info
