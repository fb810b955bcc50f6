"""The protocol's ops as values: each function builds one request and knows how to read its
reply. Both clients run them (``client.checkpoint(...)`` is ``client.run(ops.checkpoint(...))``),
and a list of mutations is a ``batch``::

    client.batch([
        ops.create("job", detached=True),
        ops.checkpoint("job", b"state", key="step-1"),
    ])

Payloads travel as raw bytes after the request's JSON line (``payload_len``), never base64.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ._types import Attached, Checkpoint, Pong, Session, Stats

T = TypeVar("T")

Payload = bytes | bytearray | memoryview
#: A checkpoint named by its number or its key.
CheckpointRef = int | str


class Op(Generic[T]):
    """One request: its JSON fields (without ``id``), the raw payloads that follow its line,
    and how to read the reply's body."""

    __slots__ = ("fields", "parse", "payloads")

    def __init__(
        self,
        fields: dict[str, Any],
        payloads: Sequence[Payload],
        parse: Callable[[dict[str, Any]], T],
    ) -> None:
        self.fields = fields
        self.payloads = payloads
        self.parse = parse

    def __repr__(self) -> str:
        return f"Op({self.fields.get('op')!r}, {self.fields.get('name')!r})"


@dataclass(frozen=True)
class Resumed:
    """What ``resume`` answers: the session, now the caller's, and its latest intact
    checkpoint (with payload, and attachments if asked), if any."""

    session: Session
    checkpoint: Checkpoint | None


def _fields(op: str, **given: Any) -> dict[str, Any]:
    """The request object: the op and every given field that is not None."""
    fields: dict[str, Any] = {"op": op}
    for k, v in given.items():
        if v is not None:
            fields[k] = v
    return fields


def _meta(meta: Mapping[str, str] | None) -> dict[str, str] | None:
    if meta is None:
        return None
    return {str(k): str(v) for k, v in meta.items()}


def _bytes(payload: Payload, what: str) -> Payload:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(payload).__name__}")
    return payload


def ignore_body(_: dict[str, Any]) -> None:
    """The reply of an op whose caller needs nothing but its success: the clients do not
    even decode it when it says so."""
    return None


def _session(r: dict[str, Any]) -> Session:
    return Session.of(r["session"])


def _maybe_checkpoint(r: dict[str, Any]) -> Checkpoint | None:
    c = r.get("checkpoint")
    return None if c is None else Checkpoint.of(c)


def _checkpoint(r: dict[str, Any]) -> Checkpoint:
    return Checkpoint.of(r["checkpoint"])


def _count(r: dict[str, Any]) -> int:
    return int(r["deleted"])


def ping() -> Op[Pong]:
    return Op(_fields("ping"), (), lambda r: Pong(r["version"], r["protocol"]))


def create(
    name: str,
    *,
    keep: int | None = None,
    meta: Mapping[str, str] | None = None,
    owner_pid: int | None = None,
    detached: bool = False,
    owner_parent: bool = False,
) -> Op[Session]:
    """A new session, owned by the calling process unless ``owner_pid`` names another,
    ``owner_parent`` asks for the caller's parent, or ``detached`` for none (never stale).
    ``keep``: checkpoints to retain (None: the daemon's default; 0: all)."""
    fields = _fields(
        "create",
        name=name,
        keep=keep,
        meta=_meta(meta),
        owner_pid=owner_pid,
        detached=detached or None,
        owner_parent=owner_parent or None,
    )
    return Op(fields, (), _session)


def checkpoint(
    name: str,
    payload: Payload,
    *,
    meta: Mapping[str, str] | None = None,
    expect: int | None = None,
    epoch: int | None = None,
    key: str | None = None,
) -> Op[Checkpoint]:
    """Writes a checkpoint. ``expect``: only if the latest is this number (0: none yet).
    ``epoch``: only at this epoch (else :class:`Fenced`). ``key``: a name unique among the
    session's retained checkpoints; the same key with the same bytes again answers the
    checkpoint there (``existing``), other bytes are :class:`AlreadyExists`."""
    payload = _bytes(payload, "payload")
    fields = _fields(
        "checkpoint",
        name=name,
        payload_len=len(payload),
        meta=_meta(meta),
        expect=expect,
        epoch=epoch,
        key=key,
    )
    return Op(fields, (payload,), _checkpoint)


def resume(
    name: str,
    *,
    owner_pid: int | None = None,
    force: bool = False,
    attachments: bool = False,
) -> Op[Resumed]:
    """Takes a session over (stale, paused, finished, detached; or active with ``force``)."""
    fields = _fields(
        "resume",
        name=name,
        owner_pid=owner_pid,
        force=force or None,
        attachments=attachments or None,
        raw=True,
    )
    return Op(fields, (), lambda r: Resumed(_session(r), _maybe_checkpoint(r)))


def get(
    name: str,
    *,
    number: int | None = None,
    key: str | None = None,
    attachments: bool = False,
) -> Op[Checkpoint | None]:
    """A checkpoint with its payload: the latest intact one, or by number or key."""
    fields = _fields(
        "get",
        name=name,
        number=number,
        key=key,
        attachments=attachments or None,
        raw=True,
    )
    return Op(fields, (), _maybe_checkpoint)


def show(name: str) -> Op[Session]:
    return Op(_fields("show", name=name), (), _session)


def list_sessions(
    *,
    status: str | None = None,
    meta: Mapping[str, str] | None = None,
    all_users: bool = False,
    prefix: str | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> Op[list[Session]]:
    """Sessions in name order: by status, meta pairs, name prefix; ``after`` a name and
    ``limit`` page through them."""
    fields = _fields(
        "list",
        status=status,
        meta=_meta(meta),
        all_users=all_users or None,
        prefix=prefix,
        after=after,
        limit=limit,
    )
    return Op(fields, (), lambda r: [Session.of(s) for s in r["sessions"]])


def history(
    name: str,
    *,
    meta: Mapping[str, str] | None = None,
    before: CheckpointRef | None = None,
    after: CheckpointRef | None = None,
    limit: int | None = None,
    reverse: bool = False,
    payloads: bool = False,
    attachments: bool = False,
) -> Op[builtins.list[Checkpoint]]:
    """Retained checkpoints, oldest first (``reverse``: newest first), those whose meta has
    every pair of ``meta``, between ``after`` and ``before`` (numbers or keys, exclusive),
    at most ``limit``; with payloads and attachments only if asked."""
    fields = _fields(
        "history",
        name=name,
        meta=_meta(meta),
        before=before,
        after=after,
        limit=limit,
        reverse=reverse or None,
        payloads=payloads or None,
        attachments=attachments or None,
        raw=(payloads or attachments) or None,
    )
    return Op(fields, (), lambda r: [Checkpoint.of(c) for c in r["checkpoints"]])


def pause(name: str) -> Op[Session]:
    return Op(_fields("pause", name=name), (), _session)


def complete(name: str) -> Op[Session]:
    return Op(_fields("complete", name=name), (), _session)


def cancel(name: str) -> Op[Session]:
    return Op(_fields("cancel", name=name), (), _session)


def fail(name: str, error: str | None = None) -> Op[Session]:
    return Op(_fields("fail", name=name, error=error), (), _session)


def delete(name: str) -> Op[bool]:
    """Deletes a session; False if there was none."""
    return Op(_fields("delete", name=name), (), lambda r: bool(r["deleted"]))


def delete_matching(session_meta: Mapping[str, str]) -> Op[int]:
    """Deletes every session of the caller whose meta has every pair (at least one)."""
    return Op(_fields("delete", session_meta=_meta(session_meta)), (), _count)


def attach(
    name: str,
    attach_key: str,
    payload: Payload,
    *,
    number: int | None = None,
    key: str | None = None,
    meta: Mapping[str, str] | None = None,
    replace: bool = False,
    epoch: int | None = None,
) -> Op[Attached]:
    """Attaches a record to a retained checkpoint (by ``number`` or ``key``). The first
    write under an ``attach_key`` wins unless ``replace``."""
    payload = _bytes(payload, "payload")
    fields = _fields(
        "attach",
        name=name,
        number=number,
        key=key,
        attach_key=attach_key,
        payload_len=len(payload),
        meta=_meta(meta),
        replace=replace or None,
        epoch=epoch,
    )
    return Op(fields, (payload,), lambda r: Attached.of(r["attachment"]))


def delete_checkpoints(
    name: str | None = None,
    *,
    session_meta: Mapping[str, str] | None = None,
    numbers: Iterable[int] | None = None,
    keys: Iterable[str] | None = None,
    meta: Mapping[str, str] | None = None,
) -> Op[int]:
    """Removes checkpoints (by number, key, or meta) of one session or of every session of
    the caller matching ``session_meta``, with their attachments; returns how many."""
    fields = _fields(
        "delete_checkpoints",
        name=name,
        session_meta=_meta(session_meta),
        numbers=None if numbers is None else builtins.list(numbers),
        keys=None if keys is None else builtins.list(keys),
        meta=_meta(meta),
    )
    return Op(fields, (), _count)


def prune(
    name: str | None = None,
    *,
    keep: int,
    session_meta: Mapping[str, str] | None = None,
) -> Op[int]:
    """Keeps only the newest ``keep`` checkpoints of the targeted sessions, now."""
    fields = _fields("prune", name=name, session_meta=_meta(session_meta), keep=keep)
    return Op(fields, (), _count)


def copy(name: str, to: str, *, meta: Mapping[str, str] | None = None) -> Op[Session]:
    """A new session ``to`` holding ``name``'s checkpoints (numbers, keys, meta, attachments)."""
    return Op(_fields("copy", name=name, to=to, meta=_meta(meta)), (), _session)


def batch(ops: Sequence[Op[Any]]) -> Op[builtins.list[Any]]:
    """Mutations applied in order, all or none, in one commit; the result of each, in order.
    If one fails, nothing is applied and the error's ``index`` names it."""
    ops = builtins.list(ops)
    payloads: builtins.list[Payload] = []
    for o in ops:
        payloads.extend(o.payloads)

    def parse(r: dict[str, Any]) -> builtins.list[Any]:
        return [o.parse(body) for o, body in zip(ops, r["results"], strict=True)]

    return Op({"op": "batch", "ops": [o.fields for o in ops]}, payloads, parse)


def stats() -> Op[Stats]:
    return Op(_fields("stats"), (), lambda r: Stats.of(r["stats"]))
