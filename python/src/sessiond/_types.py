"""What replies hold, as plain objects with attributes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _time(text: Any) -> datetime:
    # fromisoformat reads a trailing "Z" only from Python 3.11 on.
    s = str(text)
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    return datetime.fromisoformat(s)


@dataclass(frozen=True)
class Session:
    """A session as the daemon describes it."""

    name: str
    status: str
    owner_pid: int | None
    epoch: int
    created_at: datetime
    updated_at: datetime
    latest_checkpoint: int | None
    checkpoint_count: int
    keep: int
    meta: dict[str, str]
    error: str | None
    uid: int
    #: The owner's host, when sessions are shared by several hosts' daemons.
    owner_host: str | None = None
    #: The retained checkpoints' payload bytes, and what the store takes for them, each
    #: chunk once (``show`` only; ``None`` in lists).
    logical_bytes: int | None = None
    stored_bytes: int | None = None

    @classmethod
    def of(cls, v: dict[str, Any]) -> Session:
        return cls(
            name=v["name"],
            status=v["status"],
            owner_pid=v.get("owner_pid"),
            epoch=v["epoch"],
            created_at=_time(v["created_at"]),
            updated_at=_time(v["updated_at"]),
            latest_checkpoint=v.get("latest_checkpoint"),
            checkpoint_count=v.get("checkpoint_count", 0),
            keep=v.get("keep", 0),
            meta=v.get("meta") or {},
            error=v.get("error"),
            uid=v.get("uid", 0),
            owner_host=v.get("owner_host"),
            logical_bytes=v.get("logical_bytes"),
            stored_bytes=v.get("stored_bytes"),
        )


@dataclass(frozen=True)
class Attachment:
    """A record attached to a checkpoint (a framework's pending write)."""

    attach_key: str
    meta: dict[str, str]
    size: int
    payload: bytes | None

    @classmethod
    def of(cls, v: dict[str, Any]) -> Attachment:
        return cls(
            attach_key=v["attach_key"],
            meta=v.get("meta") or {},
            size=v.get("size", 0),
            payload=v.get("payload"),
        )


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint: its number, key, size, time, meta, and payload when the op returns it.

    ``existing`` is true when a write under a key found the same bytes already there (a
    retry: nothing was written). ``skipped_corrupt`` lists newer checkpoints passed over
    because they are damaged on disk. ``attachments`` is set when asked for.
    """

    number: int
    size: int
    created_at: datetime
    meta: dict[str, str]
    payload: bytes | None = None
    key: str | None = None
    existing: bool = False
    skipped_corrupt: list[int] = field(default_factory=list)
    attachments: list[Attachment] | None = None

    @classmethod
    def of(cls, v: dict[str, Any]) -> Checkpoint:
        attachments = v.get("attachments")
        return cls(
            number=v["number"],
            size=v.get("size", 0),
            created_at=_time(v["created_at"]),
            meta=v.get("meta") or {},
            payload=v.get("payload"),
            key=v.get("key"),
            existing=bool(v.get("existing", False)),
            skipped_corrupt=v.get("skipped_corrupt") or [],
            attachments=(None if attachments is None else [Attachment.of(a) for a in attachments]),
        )


@dataclass(frozen=True)
class Attached:
    """What ``attach`` did: ``existing`` when one was there already (first write wins)."""

    number: int
    key: str | None
    attach_key: str
    size: int
    existing: bool

    @classmethod
    def of(cls, v: dict[str, Any]) -> Attached:
        return cls(
            number=v["number"],
            key=v.get("key"),
            attach_key=v["attach_key"],
            size=v.get("size", 0),
            existing=bool(v.get("existing", False)),
        )


@dataclass(frozen=True)
class Pong:
    version: str
    protocol: int


@dataclass(frozen=True)
class Event:
    """One event of a ``watch``: ``kind`` is created, checkpointed, status, stale, resumed,
    deleted, or lagged (``missed`` events were dropped; ``missed`` None: an unknown number,
    other hosts' events lost while the shared store's listener was reconnecting)."""

    kind: str
    name: str
    at: datetime
    number: int | None = None
    status: str | None = None
    epoch: int | None = None
    owner_pid: int | None = None
    missed: int | None = None

    @classmethod
    def of(cls, v: dict[str, Any]) -> Event:
        return cls(
            kind=v["event"],
            name=v.get("name", ""),
            at=_time(v["at"]),
            number=v.get("number"),
            status=v.get("status"),
            epoch=v.get("epoch"),
            owner_pid=v.get("owner_pid"),
            missed=v.get("missed"),
        )


@dataclass(frozen=True)
class Stats:
    """The daemon's counters; ``store`` says whether its disk work is failing."""

    version: str
    uptime_secs: int
    sessions: int
    sessions_by_status: dict[str, int]
    checkpoints: int
    connections: int
    checkpoints_written: int
    bytes_written: int
    flushes: int
    log_segments: int
    log_bytes: int
    store: dict[str, Any]
    #: Payload bytes of every retained checkpoint, the bytes the store's live records take
    #: for them (each distinct chunk once), and the distinct chunks.
    logical_bytes: int = 0
    stored_bytes: int = 0
    chunks: int = 0

    @classmethod
    def of(cls, v: dict[str, Any]) -> Stats:
        return cls(
            version=v.get("version", ""),
            uptime_secs=v.get("uptime_secs", 0),
            sessions=v.get("sessions", 0),
            sessions_by_status=v.get("sessions_by_status") or {},
            checkpoints=v.get("checkpoints", 0),
            connections=v.get("connections", 0),
            checkpoints_written=v.get("checkpoints_written", 0),
            bytes_written=v.get("bytes_written", 0),
            flushes=v.get("flushes", 0),
            log_segments=v.get("log_segments", 0),
            log_bytes=v.get("log_bytes", 0),
            store=v.get("store") or {},
            logical_bytes=v.get("logical_bytes", 0),
            stored_bytes=v.get("stored_bytes", 0),
            chunks=v.get("chunks", 0),
        )
