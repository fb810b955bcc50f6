"""A LangGraph checkpointer on sessiond: ``SessiondSaver`` in place of ``SqliteSaver`` or
``PostgresSaver``::

    from sessiond.langgraph import SessiondSaver

    graph = builder.compile(checkpointer=SessiondSaver())

How LangGraph's model maps onto sessiond's: each (thread, namespace) is one detached session
(``lg-<hash of thread>-<hash of namespace>``, its meta naming both); each LangGraph
checkpoint is a sessiond checkpoint whose key is the checkpoint's id, whose meta holds the
parent's id (``lg.parent``) and each small metadata value as JSON (``m.<key>``, what
``list(filter=...)`` matches on), and whose payload is the serialized checkpoint with its
full metadata; pending writes are attachments of their checkpoint (attach key: task and
index; first write wins, special channels replace, as LangGraph's savers do). Every
method is one round trip (``put`` on a new thread, ``copy_thread``: two), every change of
several records one ``batch``, all or nothing.

With ``exclusive=True`` the process owns each thread it writes: another process's
exclusive saver writing it while this one lives gets :class:`sessiond.OwnerAlive`; once it
has died, the other takes the thread over, and this one's writes, if it comes back, are
:class:`sessiond.Fenced`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from . import _wire, ops
from ._errors import AlreadyExists, Error, Fenced, NotFound
from ._types import Checkpoint as StoredCheckpoint
from ._types import Session
from .aio import AsyncClient
from .client import Client
from .ops import Op

T = TypeVar("T")


class _Wait:
    """What a flow yields to wait (at most until ``deadline``) for one of this saver's
    checkpoint writes to finish after the ``seen``-th."""

    __slots__ = ("deadline", "seen")

    def __init__(self, seen: int, deadline: float) -> None:
        self.seen = seen
        self.deadline = deadline


#: A method's logic as a generator: it yields the ops to run, gets their results (or has
#: their errors thrown in), and returns what the method returns; the sync and the async
#: methods only differ in how they run the ops.
Flow = Generator[Op[Any] | _Wait, Any, T]

#: How long pending writes wait for the checkpoint they belong to (see `_put_writes`):
#: while one of this saver's checkpoint writes is in flight, and while none is.
_WRITES_WAIT = 30.0
_WRITES_GRACE = 0.5

#: Metadata values longer than this (as JSON) are not copied into the checkpoint's meta:
#: a filter on them is matched here instead of by the daemon.
_MAX_INDEXED_VALUE = 1024
_MAX_INDEXED_KEYS = 48
#: Checkpoints read per history request while listing.
_PAGE = 256


# Made once: json.dumps with options builds an encoder on every call.
_canonical_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_compact_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _canonical(value: Any) -> str:
    if isinstance(value, str):
        return _compact_encoder.encode(value)
    if value is None or isinstance(value, bool):
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, int):
        return str(value)
    return _canonical_encoder.encode(value)


def _digest(text: str, size: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


class SessiondSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpoints in sessiond, with the sync and the async methods.

    ``socket``: the daemon's socket (default: as sessiond resolves it). ``exclusive``: see the
    module's documentation. ``prefix``: the sessions' name prefix and the meta value that
    tells this saver's sessions from others' (savers of different prefixes do not see each
    other's threads). ``keep``: checkpoints each thread retains (0: all, as LangGraph
    expects).
    """

    def __init__(
        self,
        socket: str | None = None,
        *,
        exclusive: bool = False,
        prefix: str = "lg",
        keep: int = 0,
        serde: SerializerProtocol | None = None,
    ) -> None:
        super().__init__(serde=serde)
        self.client = Client(socket)
        self.aclient = AsyncClient(socket)
        self.exclusive = exclusive
        self.prefix = prefix
        self.keep = keep
        # Exclusive mode: the epoch this process owns each of its threads' sessions at.
        self._epochs: dict[str, int] = {}
        self._lock = threading.Lock()
        # Checkpoint writes begun and finished so far, for pending writes waiting for theirs
        # (counted by itertools.count, whose next() is atomic; notified only when some wait).
        self._begun = itertools.count(1)
        self._done = itertools.count(1)
        self._puts_begun = 0
        self._puts_done = 0
        self._waiting = 0
        self._puts = threading.Condition()
        self._names: dict[tuple[str, str], str] = {}

    # -- How the ops run ---------------------------------------------------------------

    def _drive(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, _Wait):
                    self._wait(step)
                    step = flow.send(None)
                    continue
                try:
                    result = self.client.run(step)
                except Error as e:
                    step = flow.throw(e)
                    continue
                step = flow.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value

    async def _adrive(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, _Wait):
                    await asyncio.to_thread(self._wait, step)
                    step = flow.send(None)
                    continue
                try:
                    result = await self.aclient.run(step)
                except Error as e:
                    step = flow.throw(e)
                    continue
                step = flow.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value

    def _wait(self, w: _Wait) -> None:
        with self._puts:
            self._waiting += 1
            try:
                self._puts.wait_for(
                    lambda: self._puts_done != w.seen, max(0.0, w.deadline - time.monotonic())
                )
            finally:
                self._waiting -= 1

    def _put_begun(self) -> None:
        self._puts_begun = next(self._begun)

    def _put_finished(self) -> None:
        self._puts_done = next(self._done)
        if self._waiting:
            with self._puts:
                self._puts.notify_all()

    # -- Names -------------------------------------------------------------------------

    def _thread_prefix(self, thread_id: str) -> str:
        return f"{self.prefix}-{_digest(thread_id, 12)}-"

    def _name(self, thread_id: str, ns: str) -> str:
        name = self._names.get((thread_id, ns))
        if name is None:
            name = self._thread_prefix(thread_id) + _digest(ns, 6)
            if len(self._names) > 100_000:
                self._names.clear()
            self._names[(thread_id, ns)] = name
        return name

    def _session_meta(self, thread_id: str, ns: str) -> dict[str, str]:
        return {"lg": self.prefix, "lg.thread": thread_id, "lg.ns": ns}

    def _thread_meta(self, thread_id: str) -> dict[str, str]:
        return {"lg": self.prefix, "lg.thread": thread_id}

    @staticmethod
    def _where(config: RunnableConfig) -> tuple[str, str]:
        c = config["configurable"]
        return str(c["thread_id"]), str(c.get("checkpoint_ns", ""))

    # -- Encoding ----------------------------------------------------------------------

    def _encode(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata
    ) -> tuple[bytes, dict[str, str]]:
        type_, blob = self.serde.dumps_typed(checkpoint)
        md = get_checkpoint_metadata(config, metadata)
        head = _wire.dumps({"t": type_, "md": md})
        meta: dict[str, str] = {}
        parent = config["configurable"].get("checkpoint_id")
        if parent:
            meta["lg.parent"] = str(parent)
        for k, v in md.items():
            if len(meta) > _MAX_INDEXED_KEYS or len(k) > 120:
                continue
            text = _canonical(v)
            if len(text) <= _MAX_INDEXED_VALUE:
                meta["m." + k] = text
        return b"".join((head, b"\n", blob)), meta

    def _tuple(self, thread_id: str, ns: str, cp: StoredCheckpoint) -> CheckpointTuple:
        payload = cp.payload or b""
        cut = payload.index(b"\n")
        head = _wire.loads(payload[:cut])
        checkpoint = self.serde.loads_typed((head["t"], payload[cut + 1 :]))
        parent_id = cp.meta.get("lg.parent")

        def config_of(checkpoint_id: str | None) -> RunnableConfig:
            return {
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": checkpoint_id,
                }
            }

        writes = sorted(
            cp.attachments or (),
            key=lambda a: (a.meta.get("p", ""), a.meta.get("t", ""), int(a.meta.get("i", 0))),
        )
        pending = [
            (a.meta["t"], a.meta["c"], self.serde.loads_typed((a.meta["ty"], a.payload or b"")))
            for a in writes
        ]
        return CheckpointTuple(
            config=config_of(cp.key),
            checkpoint=checkpoint,
            metadata=head["md"],
            parent_config=config_of(parent_id) if parent_id else None,
            pending_writes=pending,
        )

    # -- Flows -------------------------------------------------------------------------

    def _own(self, name: str, thread_id: str, ns: str) -> Flow[int]:
        """Exclusive mode: the epoch this process writes the session at, taking it (a new
        session, or one whose owner has died) if it does not own it yet."""
        with self._lock:
            epoch = self._epochs.get(name)
        if epoch is not None:
            return epoch
        try:
            created: Session = yield ops.create(
                name, keep=self.keep, meta=self._session_meta(thread_id, ns)
            )
            epoch = created.epoch
        except AlreadyExists:
            resumed: ops.Resumed = yield ops.resume(name)
            epoch = resumed.session.epoch
        with self._lock:
            self._epochs[name] = epoch
        return epoch

    def _epoch(self, name: str, thread_id: str, ns: str) -> Flow[int | None]:
        if not self.exclusive:
            return None
        return (yield from self._own(name, thread_id, ns))

    def _fenced(self, name: str) -> None:
        with self._lock:
            self._epochs.pop(name, None)

    def _put(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata
    ) -> Flow[RunnableConfig]:
        thread_id, ns = self._where(config)
        name = self._name(thread_id, ns)
        payload, meta = self._encode(config, checkpoint, metadata)
        self._put_begun()
        try:
            epoch = (yield from self._own(name, thread_id, ns)) if self.exclusive else None
            w = ops.checkpoint(name, payload, meta=meta, key=checkpoint["id"], epoch=epoch)
            write: Op[None] = Op(w.fields, w.payloads, ops.ignore_body)
            yield from self._write_checkpoint(name, thread_id, ns, checkpoint["id"], write)
        finally:
            self._put_finished()
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    def _write_checkpoint(
        self, name: str, thread_id: str, ns: str, checkpoint_id: str, write: Op[Any]
    ) -> Flow[None]:
        try:
            yield write
        except NotFound:
            # A thread's first checkpoint: its session, then the checkpoint, in one commit.
            create = ops.create(
                name, keep=self.keep, meta=self._session_meta(thread_id, ns), detached=True
            )
            try:
                yield ops.batch([create, write])
            except AlreadyExists as e:
                if e.index != 0:
                    raise
                yield write
        except AlreadyExists:
            # The same id with other contents: LangGraph's savers replace it.
            yield ops.batch([ops.delete_checkpoints(name, keys=[checkpoint_id]), write])
        except Fenced:
            self._fenced(name)
            raise
        return None

    def _put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> Flow[None]:
        if not writes:
            return None
        thread_id, ns = self._where(config)
        name = self._name(thread_id, ns)
        checkpoint_id = str(config["configurable"]["checkpoint_id"])
        epoch = yield from self._epoch(name, thread_id, ns)
        # As LangGraph's savers: special channels replace, others keep the first write.
        replace = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        attaches = []
        for i, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, i)
            type_, blob = self.serde.dumps_typed(value)
            attach_key = _canonical([task_id, idx])
            if len(attach_key) > 200:
                attach_key = _digest(attach_key, 32)
            meta = {"t": task_id, "p": task_path, "c": channel, "i": str(idx), "ty": type_}
            attaches.append(
                ops.attach(
                    name,
                    attach_key,
                    blob,
                    key=checkpoint_id,
                    meta=meta,
                    replace=replace,
                    epoch=epoch,
                )
            )
        op = attaches[0] if len(attaches) == 1 else ops.batch(attaches)
        # LangGraph saves checkpoints in the background (durability "async"): a task's
        # writes may come before the checkpoint they belong to is written. They wait for
        # this saver's checkpoint writes in flight (or about to start), then fail if it is
        # still not there.
        start = time.monotonic()
        while True:
            seen, in_flight = self._puts_done, self._puts_begun > self._puts_done
            try:
                yield op
                return None
            except Fenced:
                self._fenced(name)
                raise
            except NotFound:
                deadline = start + (_WRITES_WAIT if in_flight else _WRITES_GRACE)
                if time.monotonic() >= deadline:
                    raise
                yield _Wait(seen, deadline)

    def _get_tuple(self, config: RunnableConfig) -> Flow[CheckpointTuple | None]:
        thread_id, ns = self._where(config)
        name = self._name(thread_id, ns)
        try:
            cp: StoredCheckpoint | None = yield ops.get(
                name, key=get_checkpoint_id(config), attachments=True
            )
        except NotFound:
            return None
        return None if cp is None else self._tuple(thread_id, ns, cp)

    def _filter(self, filter: dict[str, Any] | None) -> tuple[dict[str, str], dict[str, Any]]:
        """The filter's pairs the daemon matches (as the meta they were stored as), and the
        ones matched here (values too long to be in the meta)."""
        served: dict[str, str] = {}
        here: dict[str, Any] = {}
        for k, v in (filter or {}).items():
            text = _canonical(v)
            if len(text) <= _MAX_INDEXED_VALUE and len(k) <= 120:
                served["m." + k] = text
            else:
                here[k] = v
        return served, here

    def _page(
        self,
        name: str,
        served: dict[str, str],
        before: ops.CheckpointRef | None,
        limit: int | None,
    ) -> Flow[list[StoredCheckpoint] | None]:
        """A page of a session's checkpoints, newest first; None if there is no session."""
        try:
            page: list[StoredCheckpoint] = yield ops.history(
                name,
                meta=served,
                before=before,
                limit=limit,
                reverse=True,
                payloads=True,
                attachments=True,
            )
        except NotFound:
            if not isinstance(before, str):
                return None
            # A `before` id that is no checkpoint of this thread: ids sort in time order.
            try:
                page = yield ops.history(
                    name, meta=served, reverse=True, payloads=True, attachments=True
                )
            except NotFound:
                return None
            page = [c for c in page if (c.key or "") < before]
            return page[:limit] if limit is not None else page
        return page

    def _sessions(self, config: RunnableConfig | None) -> Flow[list[Session]]:
        """The sessions a `list` covers: one (thread and namespace), a thread's, or all."""
        if config is None:
            found: list[Session] = yield ops.list_sessions(meta={"lg": self.prefix})
            return found
        c = config["configurable"]
        thread_id = str(c["thread_id"])
        if "checkpoint_ns" in c:
            ns = str(c["checkpoint_ns"])
            meta = self._session_meta(thread_id, ns)
            found = yield ops.list_sessions(prefix=self._name(thread_id, ns), meta=meta)
            return found
        found = yield ops.list_sessions(
            prefix=self._thread_prefix(thread_id), meta=self._thread_meta(thread_id)
        )
        return found

    def _list_one(
        self,
        thread_id: str,
        ns: str,
        filter: dict[str, Any] | None,
        before: str | None,
        limit: int | None,
    ) -> Flow[list[CheckpointTuple]]:
        """One session's tuples, newest first, a page per round trip."""
        name = self._name(thread_id, ns)
        served, here = self._filter(filter)
        out: list[CheckpointTuple] = []
        cursor: ops.CheckpointRef | None = before
        while limit is None or len(out) < limit:
            want = _PAGE if limit is None or here else min(_PAGE, limit - len(out))
            page = yield from self._page(name, served, cursor, want)
            if not page:
                break
            for cp in page:
                t = self._tuple(thread_id, ns, cp)
                if all(t.metadata.get(k) == v for k, v in here.items()):
                    out.append(t)
            if len(page) < want:
                break
            cursor = page[-1].number
        return out[:limit] if limit is not None else out

    def _list(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> Flow[list[CheckpointTuple]]:
        before_id = get_checkpoint_id(before) if before else None
        c = config["configurable"] if config else {}
        if config is not None and "checkpoint_ns" in c:
            thread_id, ns = self._where(config)
            return (yield from self._list_one(thread_id, ns, filter, before_id, limit))
        # Several sessions (a thread's namespaces, or every thread): merged by id.
        sessions = yield from self._sessions(config)
        merged: list[CheckpointTuple] = []
        for s in sessions:
            thread_id, ns = s.meta.get("lg.thread", ""), s.meta.get("lg.ns", "")
            merged.extend((yield from self._list_one(thread_id, ns, filter, before_id, limit)))
        merged.sort(key=lambda t: str(t.config["configurable"]["checkpoint_id"]), reverse=True)
        return merged[:limit] if limit is not None else merged

    def _copy_thread(self, source: str, target: str) -> Flow[None]:
        sessions: list[Session] = yield ops.list_sessions(
            prefix=self._thread_prefix(source), meta=self._thread_meta(source)
        )
        copies = []
        for s in sessions:
            ns = s.meta.get("lg.ns", "")
            to = self._name(target, ns)
            copies.append(ops.copy(s.name, to, meta=self._session_meta(target, ns)))
        if copies:
            yield ops.batch(copies)
        return None

    def _prune(self, thread_ids: Sequence[str], strategy: str) -> Flow[None]:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r} (keep_latest or delete)")
        if not thread_ids:
            return None
        if strategy == "keep_latest":
            # The latest of each namespace: each is a session of its own.
            batch = [ops.prune(keep=1, session_meta=self._thread_meta(str(t))) for t in thread_ids]
        else:
            batch = [ops.delete_matching(self._thread_meta(str(t))) for t in thread_ids]
        yield ops.batch(batch)
        return None

    def _delete_for_runs(self, run_ids: Sequence[str]) -> Flow[None]:
        if not run_ids:
            return None
        batch = [
            ops.delete_checkpoints(
                session_meta={"lg": self.prefix}, meta={"m.run_id": _canonical(str(r))}
            )
            for r in run_ids
        ]
        yield ops.batch(batch)
        return None

    def _delete_thread(self, thread_id: str) -> Flow[None]:
        yield ops.delete_matching(self._thread_meta(str(thread_id)))
        return None

    # -- LangGraph's interface: sync ---------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._drive(self._get_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        yield from self._drive(self._list(config, filter, before, limit))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._drive(self._put(config, checkpoint, metadata))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._drive(self._put_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._drive(self._delete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._drive(self._delete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._drive(self._copy_thread(str(source_thread_id), str(target_thread_id)))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._drive(self._prune(thread_ids, strategy))

    # -- LangGraph's interface: async --------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._adrive(self._get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for t in await self._adrive(self._list(config, filter, before, limit)):
            yield t

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._adrive(self._put(config, checkpoint, metadata))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._adrive(self._put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._adrive(self._delete_thread(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._adrive(self._delete_for_runs(run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._adrive(self._copy_thread(str(source_thread_id), str(target_thread_id)))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._adrive(self._prune(thread_ids, strategy))

    def get_next_version(self, current: str | None, channel: None) -> str:
        """String versions, as LangGraph's own savers make them."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    def close(self) -> None:
        """Closes the blocking client's idle connections."""
        self.client.close()
