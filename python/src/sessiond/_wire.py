"""JSON lines with raw payloads: a request is its JSON object on one line, then the bytes of
the payloads it announces (``payload_len``); a reply to a request with ``raw`` is its line,
then its payloads' bytes in the order :func:`payload_places` walks them."""

from __future__ import annotations

import json
import os
from typing import Any

from ._errors import ProtocolError, from_reply
from ._types import Event
from .ops import Op, Payload

try:
    import orjson
except ImportError:  # PyPy, or an install without it: the standard library's
    orjson = None  # type: ignore[assignment]

_stdlib_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dumps(obj: Any) -> bytes:
    """Compact JSON in UTF-8; orjson's where it is installed (many times faster than the
    standard library's on a request line), else the standard library's."""
    if orjson is not None:
        try:
            return orjson.dumps(obj)
        except TypeError:
            pass  # what orjson refuses and the standard library takes (an int past 64 bits)
    return _stdlib_dumps(obj).encode()


def loads(data: bytes | str) -> Any:
    """A JSON text's value (``ValueError`` if it is not JSON)."""
    if orjson is not None:
        return orjson.loads(data)
    return json.loads(data)


#: Payloads up to this size are copied into the line's buffer: one send beats a gather.
SMALL_PAYLOAD = 16 << 10


def default_socket() -> str:
    """The socket as daemon and clients resolve it: ``$SESSIOND_SOCKET``, else as root
    ``/run/sessiond/sessiond.sock``, else under ``$XDG_RUNTIME_DIR``, else ``/tmp``."""
    explicit = os.environ.get("SESSIOND_SOCKET")
    if explicit:
        return explicit
    if os.geteuid() == 0:
        return "/run/sessiond/sessiond.sock"
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run:
        return os.path.join(run, "sessiond", "sessiond.sock")
    return f"/tmp/sessiond-{os.geteuid()}/sessiond.sock"


def untrusted_socket_dir(path: str) -> str | None:
    """Why the directory holding the socket ``path`` cannot be trusted (another user could
    swap the socket in it), as the daemon and the Rust clients check it; ``None`` if it can."""
    directory = os.path.dirname(path)
    if not directory:
        return None
    try:
        st = os.stat(directory)
    except OSError:
        return None
    mode, uid, me = st.st_mode & 0o7777, st.st_uid, os.geteuid()
    if mode & 0o022 and not mode & 0o1000:
        return (
            f"refusing the socket directory {directory}: other users may write to it "
            f"(mode {mode:o}, owner uid {uid}), so the socket in it could be swapped; "
            "make it 0700 and yours, or choose another socket"
        )
    if uid not in (me, 0):
        try:
            parent = os.stat(os.path.dirname(directory) or "/")
            made_by_root = parent.st_uid == 0 and not parent.st_mode & 0o022
        except OSError:
            made_by_root = False
        if not made_by_root:
            return (
                f"refusing the socket directory {directory}: it belongs to uid {uid}, not to "
                f"you (uid {me}) nor root (mode {mode:o}), so its owner could swap the socket; "
                "remove it or choose another socket"
            )
    return None


def request_parts(op: Op[Any], request_id: int) -> list[Payload]:
    """What to send for ``op``: its line, then its payloads (small ones in the same buffer)."""
    fields = op.fields
    fields["id"] = request_id
    try:
        line = dumps(fields)
    finally:
        del fields["id"]
    if not op.payloads:
        return [line + b"\n"]
    if sum(len(p) for p in op.payloads) <= SMALL_PAYLOAD:
        return [b"".join([line, b"\n", *op.payloads])]
    return [line + b"\n", *op.payloads]


def _places(reply: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    """The objects whose payload follows the line, with its length, in the daemon's order:
    a checkpoint's payload, then its attachments'; checkpoints and results entry by entry."""
    out: list[tuple[dict[str, Any], int]] = []

    def checkpoint(c: dict[str, Any]) -> None:
        n = c.get("payload_len")
        if n is not None:
            out.append((c, n))
        for a in c.get("attachments") or ():
            n = a.get("payload_len")
            if n is not None:
                out.append((a, n))

    def walk(body: dict[str, Any]) -> None:
        c = body.get("checkpoint")
        if isinstance(c, dict):
            checkpoint(c)
        for c in body.get("checkpoints") or ():
            checkpoint(c)
        for r in body.get("results") or ():
            walk(r)

    walk(reply)
    return out


def succeeded(line: bytes, request_id: int) -> bool:
    """Whether a reply line is the success of request `request_id`, read from its start
    (the daemon writes `id`, then `ok`, first) without decoding the rest."""
    return line.startswith(b'{"id":%d,"ok":true' % request_id)


def parse_reply(
    line: bytes, request_id: int, op: Op[Any]
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], int]]]:
    """The reply object of a line, and where the raw payloads that follow it go."""
    try:
        reply = loads(line)
    except ValueError as e:
        raise ProtocolError(f"reply is not JSON ({e}): {line[:200]!r}") from None
    if not isinstance(reply, dict):
        raise ProtocolError(f"reply is not an object: {line[:200]!r}")
    if reply.get("id") != request_id:
        raise ProtocolError(f"reply to request {reply.get('id')!r} while waiting for {request_id}")
    places = _places(reply) if op.fields.get("raw") else []
    return reply, places


def finish_reply(
    reply: dict[str, Any],
    places: list[tuple[dict[str, Any], int]],
    payloads: list[bytes],
    op: Op[Any],
) -> Any:
    """The op's result, once the raw payloads are read (or its error raised)."""
    for (obj, _), data in zip(places, payloads, strict=True):
        del obj["payload_len"]
        obj["payload"] = data
    if not reply.get("ok"):
        raise from_reply(reply.get("error") or {})
    return op.parse(reply)


def event(line: bytes) -> Event:
    """A watch event's line."""
    try:
        return Event.of(loads(line))
    except (ValueError, KeyError, TypeError) as e:
        raise ProtocolError(f"not an event ({e}): {line[:200]!r}") from None
