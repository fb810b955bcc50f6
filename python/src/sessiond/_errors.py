"""Errors: one exception per kind of error the daemon answers, under :class:`Error`."""

from __future__ import annotations

from typing import Any


class Error(Exception):
    """Anything sessiond refused, or a failure to reach it.

    ``kind`` is the daemon's error kind (``"not_found"``, ...), or ``"connection"`` /
    ``"protocol"`` for the client's own failures. ``index`` names the op of a ``batch``
    that failed (nothing of the batch was applied).
    """

    kind = "internal"

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


class InvalidArgument(Error):
    kind = "invalid_argument"


class NotFound(Error):
    kind = "not_found"


class AlreadyExists(Error):
    kind = "already_exists"


class OwnerAlive(Error):
    """The session is active and its owner runs; ``pid`` is that owner, ``host`` its host
    when sessions are shared by several hosts' daemons."""

    kind = "owner_alive"

    def __init__(
        self,
        message: str,
        *,
        pid: int | None = None,
        host: str | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(message, index=index)
        self.pid = pid
        self.host = host


class Fenced(Error):
    """Another process resumed the session: this handle's epoch is over."""

    kind = "fenced"


class Conflict(Error):
    kind = "conflict"


class SessionClosed(Error):
    kind = "session_closed"


class TooLarge(Error):
    kind = "too_large"


class PermissionDenied(Error):
    kind = "permission_denied"


class Unavailable(Error):
    """The daemon cannot do it now (its disk is failing, it is stopping): try again."""

    kind = "unavailable"


class UnsupportedVersion(Error):
    kind = "unsupported_version"


class Internal(Error):
    kind = "internal"


class ConnectionFailed(Error):
    """The daemon could not be reached, or the connection to it broke."""

    kind = "connection"


class ProtocolError(Error):
    """The daemon answered something this client cannot read."""

    kind = "protocol"


_BY_KIND: dict[str, type[Error]] = {
    cls.kind: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        OwnerAlive,
        Fenced,
        Conflict,
        SessionClosed,
        TooLarge,
        PermissionDenied,
        Unavailable,
        UnsupportedVersion,
        Internal,
    )
}


def from_reply(error: dict[str, Any]) -> Error:
    """The exception for an error reply's ``error`` object."""
    kind = str(error.get("kind", "internal"))
    message = str(error.get("message", kind))
    index = error.get("index")
    cls = _BY_KIND.get(kind, Internal)
    if cls is OwnerAlive:
        return OwnerAlive(
            message, pid=error.get("owner_pid"), host=error.get("owner_host"), index=index
        )
    return cls(message, index=index)
