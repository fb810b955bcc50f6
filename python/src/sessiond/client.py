"""The blocking client: a pool of connections, safe to share between threads (each call
takes an idle connection, or opens one, for its request and reply)."""

from __future__ import annotations

import builtins
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from . import _wire, ops
from ._errors import ConnectionFailed, Error, ProtocolError
from ._types import Attached, Checkpoint, Event, Pong, Session, Stats
from .ops import CheckpointRef, Op, Payload

T = TypeVar("T")

#: How long a request may take before it fails: generous, a large checkpoint on a slow
#: disk takes a while.
DEFAULT_TIMEOUT = 60.0

#: How long a call alone in flight polls its socket for the reply before sleeping on it
#: (see :class:`Client`): about what a durable write takes on a fast disk.
DEFAULT_POLL_WINDOW = 0.0005


class _Connection:
    """One JSON-lines connection: a request, then its reply."""

    def __init__(self, path: str, timeout: float | None) -> None:
        untrusted = _wire.untrusted_socket_dir(path)
        if untrusted is not None:
            raise ConnectionFailed(untrusted)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
            if timeout is not None:
                # The kernel's timeouts on a blocking socket: Python's own (settimeout) would
                # poll before every send and receive, a system call more each way.
                tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        except OSError as e:
            self.sock.close()
            raise ConnectionFailed(
                f"cannot connect to sessiond at {path}: {e} "
                "(is the daemon running? start it with `sessiond`)"
            ) from None
        self.reader = self.sock.makefile("rb", buffering=1 << 16)
        self.next_id = 0
        self._readable = select.poll()
        self._readable.register(self.sock, select.POLLIN)
        #: The last reply came within the poll window: poll for the next one.
        self.quick = True

    def send(self, op: Op[Any]) -> int:
        self.next_id += 1
        parts = _wire.request_parts(op, self.next_id)
        if len(parts) == 1:
            self.sock.sendall(parts[0])
        else:
            views = [memoryview(p) for p in parts if len(p)]
            while views:
                sent = self.sock.sendmsg(views)
                while sent and views:
                    if sent >= len(views[0]):
                        sent -= len(views[0])
                        views.pop(0)
                    else:
                        views[0] = views[0][sent:]
                        sent = 0
        return self.next_id

    def poll(self, window: float) -> bool:
        """Returns once the reply has begun to arrive (``True``), or after ``window`` seconds
        (``False``): a thread that sleeps on the socket instead takes tens of microseconds to
        wake on a virtual machine whose idle CPU has halted meanwhile."""
        until = time.perf_counter() + window
        ready = self._readable.poll
        while not ready(0):
            if time.perf_counter() >= until:
                return False
        return True

    def receive(self, request_id: int, op: Op[T]) -> T:
        line = self.reader.readline()
        if not line.endswith(b"\n"):
            raise ConnectionFailed("the daemon closed the connection")
        if op.parse is ops.ignore_body and _wire.succeeded(line, request_id):
            return None  # type: ignore[return-value]
        reply, places = _wire.parse_reply(line, request_id, op)
        payloads = []
        for _, n in places:
            data = self.reader.read(n)
            if len(data) != n:
                raise ConnectionFailed("the daemon closed the connection mid-reply")
            payloads.append(data)
        result: T = _wire.finish_reply(reply, places, payloads, op)
        return result

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Client:
    """A blocking client of sessiond, one method per op.

    ``socket``: the daemon's socket (default: as the daemon resolves it, see
    :func:`sessiond.default_socket`). Payloads are ``bytes``; replies are plain objects;
    errors raise the :class:`sessiond.Error` subclass of their kind.

    ``poll_window``: how long a call that is the client's only one in flight polls its
    socket for the reply before sleeping on it (seconds; 0 never polls), while the replies
    on its connection come within it. A thread woken from sleep pays a wake-up of its CPU,
    tens of microseconds on a virtual machine, a fair part of a durable write; polling
    costs up to the window in CPU per call instead. The daemon does the same for its
    clients' next requests (``--poll-window``).

    >>> c = Client()
    >>> c.create("job", keep=5)
    >>> c.checkpoint("job", b"step 1")
    """

    def __init__(
        self,
        socket: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        poll_window: float = DEFAULT_POLL_WINDOW,
    ):
        if not poll_window >= 0:  # NaN too
            raise ValueError(f"poll_window must be 0 or more seconds, not {poll_window!r}")
        self.socket = socket or _wire.default_socket()
        self.timeout = timeout
        self.poll_window = poll_window
        self._idle: list[_Connection] = []
        self._in_flight = 0
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the idle connections (a call after this opens new ones)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def run(self, op: Op[T]) -> T:
        """Sends one op and returns what its reply says."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
            self._in_flight += 1
            # Several calls at once: polling would take the CPU and the GIL from the others.
            window = self.poll_window if self._in_flight == 1 else 0.0
        try:
            return self._run(op, conn, window)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _run(self, op: Op[T], conn: _Connection | None, window: float) -> T:
        fresh = conn is None
        if conn is None:
            conn = _Connection(self.socket, self.timeout)
        try:
            try:
                request_id = conn.send(op)
            except OSError:
                if fresh:
                    raise
                # An idle connection the daemon closed (it restarted): nothing was sent.
                conn.close()
                conn = _Connection(self.socket, self.timeout)
                request_id = conn.send(op)
            # Polled for only while replies come within the window: a slow store (a
            # database behind the daemon, a slow disk) would have it spend the whole window
            # on every call, taking a CPU from the daemon and its store.
            started = time.perf_counter() if window else 0.0
            if window and conn.quick:
                conn.quick = conn.poll(window)
            result = conn.receive(request_id, op)
            if window and not conn.quick:
                conn.quick = time.perf_counter() - started < window
        except (ConnectionFailed, ProtocolError):
            conn.close()
            raise
        except BlockingIOError:
            conn.close()
            raise ConnectionFailed(f"sessiond did not answer within {self.timeout}s") from None
        except OSError as e:
            conn.close()
            raise ConnectionFailed(f"lost the connection to sessiond: {e}") from None
        except Error:
            self._give_back(conn)
            raise
        except BaseException:
            conn.close()
            raise
        self._give_back(conn)
        return result

    def _give_back(self, conn: _Connection) -> None:
        with self._lock:
            self._idle.append(conn)

    # The ops; see :mod:`sessiond.ops` for what each field means.

    def ping(self) -> Pong:
        return self.run(ops.ping())

    def create(
        self,
        name: str,
        *,
        keep: int | None = None,
        meta: Mapping[str, str] | None = None,
        owner_pid: int | None = None,
        detached: bool = False,
        owner_parent: bool = False,
    ) -> Session:
        """Creates a session owned by this process (or as the options say)."""
        return self.run(
            ops.create(
                name,
                keep=keep,
                meta=meta,
                owner_pid=owner_pid,
                detached=detached,
                owner_parent=owner_parent,
            )
        )

    def checkpoint(
        self,
        name: str,
        payload: Payload,
        *,
        meta: Mapping[str, str] | None = None,
        expect: int | None = None,
        epoch: int | None = None,
        key: str | None = None,
    ) -> Checkpoint:
        """Writes a checkpoint (durable when this returns)."""
        return self.run(
            ops.checkpoint(name, payload, meta=meta, expect=expect, epoch=epoch, key=key)
        )

    def resume(
        self,
        name: str,
        *,
        owner_pid: int | None = None,
        force: bool = False,
        attachments: bool = False,
    ) -> SessionHandle:
        """Takes a session over; the handle writes at its new epoch and holds the latest
        intact checkpoint it resumed from (``resumed_from``)."""
        r = self.run(ops.resume(name, owner_pid=owner_pid, force=force, attachments=attachments))
        return SessionHandle(self, r.session, r.checkpoint)

    def session(self, name: str) -> SessionHandle:
        """A handle on a session at its current epoch (without taking it over)."""
        return SessionHandle(self, self.show(name), None)

    def get(
        self,
        name: str,
        *,
        number: int | None = None,
        key: str | None = None,
        attachments: bool = False,
    ) -> Checkpoint | None:
        return self.run(ops.get(name, number=number, key=key, attachments=attachments))

    def show(self, name: str) -> Session:
        return self.run(ops.show(name))

    def list(
        self,
        *,
        status: str | None = None,
        meta: Mapping[str, str] | None = None,
        all_users: bool = False,
        prefix: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Session]:
        return self.run(
            ops.list_sessions(
                status=status,
                meta=meta,
                all_users=all_users,
                prefix=prefix,
                after=after,
                limit=limit,
            )
        )

    def history(
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
        return self.run(
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

    def pause(self, name: str) -> Session:
        return self.run(ops.pause(name))

    def complete(self, name: str) -> Session:
        return self.run(ops.complete(name))

    def cancel(self, name: str) -> Session:
        return self.run(ops.cancel(name))

    def fail(self, name: str, error: str | None = None) -> Session:
        return self.run(ops.fail(name, error))

    def delete(self, name: str) -> bool:
        return self.run(ops.delete(name))

    def delete_matching(self, session_meta: Mapping[str, str]) -> int:
        return self.run(ops.delete_matching(session_meta))

    def attach(
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
        return self.run(
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

    def delete_checkpoints(
        self,
        name: str | None = None,
        *,
        session_meta: Mapping[str, str] | None = None,
        numbers: Sequence[int] | None = None,
        keys: Sequence[str] | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> int:
        return self.run(
            ops.delete_checkpoints(
                name, session_meta=session_meta, numbers=numbers, keys=keys, meta=meta
            )
        )

    def prune(
        self,
        name: str | None = None,
        *,
        keep: int,
        session_meta: Mapping[str, str] | None = None,
    ) -> int:
        return self.run(ops.prune(name, keep=keep, session_meta=session_meta))

    def copy(self, name: str, to: str, *, meta: Mapping[str, str] | None = None) -> Session:
        return self.run(ops.copy(name, to, meta=meta))

    def batch(self, batch_ops: Sequence[Op[Any]]) -> builtins.list[Any]:
        """Mutations (built with :mod:`sessiond.ops`) applied all or none, in one commit."""
        return self.run(ops.batch(batch_ops))

    def stats(self) -> Stats:
        return self.run(ops.stats())

    def watch(self, name: str | None = None) -> Watch:
        """Events as they happen (every session of the caller, or one), on a connection of
        their own: iterate, then close."""
        return Watch(_Connection(self.socket, None), name)


class SessionHandle:
    """A session at an epoch: every write carries it, so that once another process has
    resumed the session this handle's writes fail with :class:`sessiond.Fenced`."""

    def __init__(self, client: Client, info: Session, resumed_from: Checkpoint | None):
        self.client = client
        self.info = info
        #: The checkpoint a resume answered with (its payload is the state to go on from).
        self.resumed_from = resumed_from

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def epoch(self) -> int:
        return self.info.epoch

    def checkpoint(
        self,
        payload: Payload,
        *,
        meta: Mapping[str, str] | None = None,
        expect: int | None = None,
        key: str | None = None,
    ) -> Checkpoint:
        return self.client.checkpoint(
            self.name, payload, meta=meta, expect=expect, epoch=self.epoch, key=key
        )

    def attach(
        self,
        attach_key: str,
        payload: Payload,
        *,
        number: int | None = None,
        key: str | None = None,
        meta: Mapping[str, str] | None = None,
        replace: bool = False,
    ) -> Attached:
        return self.client.attach(
            self.name,
            attach_key,
            payload,
            number=number,
            key=key,
            meta=meta,
            replace=replace,
            epoch=self.epoch,
        )

    def pause(self) -> Session:
        self.info = self.client.pause(self.name)
        return self.info

    def complete(self) -> Session:
        self.info = self.client.complete(self.name)
        return self.info

    def cancel(self) -> Session:
        self.info = self.client.cancel(self.name)
        return self.info

    def fail(self, error: str | None = None) -> Session:
        self.info = self.client.fail(self.name, error)
        return self.info


class Watch:
    """An iterator of :class:`sessiond.Event`, until closed."""

    def __init__(self, conn: _Connection, name: str | None) -> None:
        self._conn = conn
        op: Op[bool] = Op(
            {"op": "watch"} if name is None else {"op": "watch", "name": name},
            (),
            lambda r: bool(r.get("watching")),
        )
        self._conn.receive(self._conn.send(op), op)

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        line = self._conn.reader.readline()
        if not line:
            raise StopIteration
        return _wire.event(line)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()
