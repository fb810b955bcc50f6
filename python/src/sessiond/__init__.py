"""Python client of sessiond, the checkpointing session daemon.

``Client`` (blocking, thread-safe) and ``AsyncClient`` (asyncio) have one method per op of
the protocol; ``sessiond.ops`` builds the same requests as values (for ``batch``); errors
are the subclasses of ``Error``; ``sessiond.langgraph.SessiondSaver`` is a LangGraph
checkpointer (``pip install "sessiond[langgraph]"``).
"""

from ._errors import (
    AlreadyExists,
    Conflict,
    ConnectionFailed,
    Error,
    Fenced,
    Internal,
    InvalidArgument,
    NotFound,
    OwnerAlive,
    PermissionDenied,
    ProtocolError,
    SessionClosed,
    TooLarge,
    Unavailable,
    UnsupportedVersion,
)
from ._types import Attached, Attachment, Checkpoint, Event, Pong, Session, Stats
from ._wire import default_socket
from .aio import AsyncClient, AsyncSessionHandle
from .client import Client, SessionHandle, Watch
from .ops import Op, Resumed

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "AsyncSessionHandle",
    "Attached",
    "Attachment",
    "Checkpoint",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Error",
    "Event",
    "Fenced",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "Op",
    "OwnerAlive",
    "PermissionDenied",
    "Pong",
    "ProtocolError",
    "Resumed",
    "Session",
    "SessionClosed",
    "SessionHandle",
    "Stats",
    "TooLarge",
    "Unavailable",
    "UnsupportedVersion",
    "Watch",
    "default_socket",
]
