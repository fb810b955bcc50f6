"""The blocking client against the real daemon: every op, its errors as exceptions, session
handles and their epochs, batches, watch, and sharing one client between threads."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest
from conftest import Daemon, wait_until

import sessiond
from sessiond import ops


def test_sessions_and_checkpoints_round_trip(client: sessiond.Client) -> None:
    s = client.create("job", keep=3, meta={"team": "data"})
    assert (s.status, s.epoch, s.keep, s.owner_pid) == ("active", 1, 3, os.getpid())
    assert s.meta == {"team": "data"}
    big = os.urandom(200_000)
    for i in range(5):
        c = client.checkpoint("job", big if i == 4 else b"step %d" % i, meta={"i": str(i)})
        assert c.number == i + 1
    got = client.get("job")
    assert got is not None and got.payload == big and got.meta == {"i": "4"}
    assert client.get("job", number=3).payload == b"step 2"  # type: ignore[union-attr]
    assert [h.number for h in client.history("job")] == [3, 4, 5], "keep 3"
    assert all(h.payload is None for h in client.history("job"))
    assert client.show("job").latest_checkpoint == 5
    assert [x.name for x in client.list(meta={"team": "data"})] == ["job"]
    assert client.pause("job").status == "paused"
    assert client.complete("job").status == "completed"
    assert client.delete("job") is True
    assert client.delete("job") is False


def test_errors_are_typed_exceptions(client: sessiond.Client, daemon: Daemon) -> None:
    with pytest.raises(sessiond.NotFound):
        client.show("nope")
    client.create("a")
    with pytest.raises(sessiond.AlreadyExists):
        client.create("a")
    with pytest.raises(sessiond.InvalidArgument, match="session name"):
        client.create("bad name")
    client.checkpoint("a", b"1")
    with pytest.raises(sessiond.Conflict):
        client.checkpoint("a", b"2", expect=0)
    client.fail("a", "boom")
    with pytest.raises(sessiond.SessionClosed):
        client.checkpoint("a", b"3")
    # The owner (this process) is alive: another may not take it without force.
    client.create("owned")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(sessiond.OwnerAlive) as e:
            client.resume("owned", owner_pid=sleeper.pid)
        assert e.value.pid == os.getpid()
        assert e.value.kind == "owner_alive"
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(TypeError):
        client.checkpoint("a", "not bytes")  # type: ignore[arg-type]
    # Every kind is an Error.
    with pytest.raises(sessiond.Error):
        client.get("nope")


def test_too_large_is_refused_and_the_client_goes_on(tmp_path: object) -> None:
    from pathlib import Path

    d = Daemon(Path(str(tmp_path)), "--max-checkpoint-bytes", "1024")
    d.start()
    try:
        with d.client() as c:
            c.create("s", detached=True)
            with pytest.raises(sessiond.TooLarge):
                c.checkpoint("s", b"x" * 2048)
            assert c.checkpoint("s", b"x" * 1024).number == 1
    finally:
        d.kill9()


def test_a_handle_writes_at_its_epoch_and_is_fenced_once_resumed_elsewhere(
    client: sessiond.Client,
) -> None:
    client.create("job")
    first = client.session("job")
    assert first.checkpoint(b"mine").number == 1
    # Another owner takes it over (force: this process still lives).
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        second = client.resume("job", owner_pid=sleeper.pid, force=True)
        assert second.epoch == first.epoch + 1
        assert second.resumed_from is not None and second.resumed_from.payload == b"mine"
        with pytest.raises(sessiond.Fenced):
            first.checkpoint(b"stale writer")
        assert second.checkpoint(b"theirs").number == 2
        assert second.complete().status == "completed"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_keys_attachments_and_queries(client: sessiond.Client) -> None:
    client.create("t", detached=True, keep=0)
    for i in range(6):
        source = "loop" if i % 2 else "input"
        client.checkpoint("t", b"p%d" % i, key=f"k{i}", meta={"source": source})
    again = client.checkpoint("t", b"p5", key="k5", meta={"source": "loop"})
    assert again.existing and again.number == 6
    with pytest.raises(sessiond.AlreadyExists):
        client.checkpoint("t", b"other", key="k5")
    a = client.attach("t", "w1", b"pending", key="k5", meta={"channel": "c"})
    assert (a.number, a.existing) == (6, False)
    assert client.attach("t", "w1", b"again", key="k5").existing
    got = client.get("t", key="k5", attachments=True)
    assert got is not None and got.key == "k5"
    assert [(x.attach_key, x.payload, x.meta) for x in got.attachments or []] == [
        ("w1", b"pending", {"channel": "c"})
    ]
    page = client.history(
        "t", meta={"source": "loop"}, before="k5", reverse=True, limit=2, payloads=True
    )
    assert [(c.number, c.payload) for c in page] == [(4, b"p3"), (2, b"p1")]
    assert client.delete_checkpoints("t", keys=["k0"], numbers=[2]) == 2
    assert client.prune("t", keep=2) == 2
    assert [c.key for c in client.history("t")] == ["k4", "k5"]
    copied = client.copy("t", "t2", meta={"copy": "1"})
    assert (copied.checkpoint_count, copied.latest_checkpoint) == (2, 6)
    assert client.get("t2", key="k5", attachments=True).attachments[0].payload == b"pending"  # type: ignore[union-attr,index]
    client.create("other", detached=True, meta={"copy": "1"})
    assert [s.name for s in client.list(prefix="t", limit=1)] == ["t"]
    assert [s.name for s in client.list(prefix="t", after="t")] == ["t2"]
    assert client.delete_matching({"copy": "1"}) == 2


def test_a_batch_is_all_or_nothing(client: sessiond.Client) -> None:
    with pytest.raises(sessiond.NotFound) as e:
        client.batch(
            [
                ops.create("b", detached=True),
                ops.checkpoint("b", b"1", key="one"),
                ops.attach("b", "w", b"x", key="missing"),
            ]
        )
    assert e.value.index == 2
    with pytest.raises(sessiond.NotFound):
        client.show("b")
    results = client.batch(
        [
            ops.create("b", detached=True),
            ops.checkpoint("b", b"1" * 100_000, key="one"),
            ops.attach("b", "w", b"x", key="one"),
        ]
    )
    assert [type(r).__name__ for r in results] == ["Session", "Checkpoint", "Attached"]
    assert client.get("b", key="one").payload == b"1" * 100_000  # type: ignore[union-attr]


def test_one_client_shared_by_threads(client: sessiond.Client) -> None:
    for i in range(16):
        client.create(f"s{i}", detached=True, keep=0)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for n in range(1, 51):
                c = client.checkpoint(f"s{i}", b"%d:%d" % (i, n))
                assert c.number == n
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(client.show(f"s{i}").latest_checkpoint == 50 for i in range(16))


def test_the_client_reconnects_after_a_restart(daemon: Daemon) -> None:
    c = daemon.client()
    c.create("r", detached=True)
    c.checkpoint("r", b"before")
    daemon.kill9()
    with pytest.raises(sessiond.ConnectionFailed):
        c.checkpoint("r", b"while down")
    daemon.start()
    assert c.checkpoint("r", b"after").number == 2
    assert c.get("r").payload == b"after"  # type: ignore[union-attr]


def test_watch_reports_events(client: sessiond.Client) -> None:
    events: list[sessiond.Event] = []
    with client.watch("w") as w:
        client.create("w")
        client.checkpoint("w", b"1")
        for e in w:
            events.append(e)
            if e.kind == "checkpointed":
                break
    assert [(e.kind, e.name) for e in events] == [("created", "w"), ("checkpointed", "w")]
    assert events[1].number == 1


def test_ping_and_stats(client: sessiond.Client) -> None:
    pong = client.ping()
    assert pong.protocol == 4
    client.create("s", detached=True)
    client.checkpoint("s", b"x")
    stats = client.stats()
    assert stats.sessions == 1 and stats.checkpoints_written >= 1
    assert stats.store["degraded"] is False
    # Stored: the byte, and on the local log its record's header too.
    assert stats.logical_bytes == 1 and stats.stored_bytes >= 1
    shown = client.show("s")
    assert shown.logical_bytes == 1 and (shown.stored_bytes or 0) >= 1
    assert client.list()[0].stored_bytes is None, "only show says what a session takes"
    wait_until("a connection to show", lambda: client.stats().connections >= 1)


def test_a_socket_directory_others_could_swap_the_socket_in_is_refused() -> None:
    import asyncio
    import shutil
    import tempfile

    from sessiond.aio import AsyncClient

    # Writable by every user and not sticky: whoever can write there could swap the socket.
    shared = tempfile.mkdtemp(prefix="sessiond-open-", dir="/tmp")
    try:
        os.chmod(shared, 0o777)
        path = os.path.join(shared, "sessiond.sock")
        with pytest.raises(sessiond.ConnectionFailed, match="other users may write to it"):
            sessiond.Client(path).ping()

        async def ping() -> None:
            async with AsyncClient(path) as c:
                await c.ping()

        with pytest.raises(sessiond.ConnectionFailed, match="other users may write to it"):
            asyncio.run(ping())
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_call_polls_for_its_reply_only_until_it_arrives(daemon: Daemon) -> None:
    import time

    with pytest.raises(ValueError, match="poll_window"):
        sessiond.Client(daemon.socket, poll_window=-1)
    with pytest.raises(ValueError, match="poll_window"):
        sessiond.Client(daemon.socket, poll_window=float("nan"))
    # A window far longer than any reply here: polling must end when the reply comes.
    with sessiond.Client(daemon.socket, poll_window=10.0) as slow_to_give_up:
        slow_to_give_up.create("polled", detached=True)
        started = time.monotonic()
        for i in range(3):
            assert slow_to_give_up.checkpoint("polled", b"%d" % i).number == i + 1
        assert time.monotonic() - started < 10, "a call waited out the window"
        assert slow_to_give_up._idle[0].quick, "replies came within the window"
    # Replies slower than the window: the connection stops polling for them. A reply that is
    # there at the first poll counts as quick (the thread was preempted after its send, as the
    # daemon woke on its CPU: on some machines call after call), so calls go on until one
    # poll has timed out; from then on no reply comes within a nanosecond of its request.
    with sessiond.Client(daemon.socket, poll_window=1e-9) as hasty:
        deadline = time.monotonic() + 10
        while True:
            assert hasty.get("polled").payload == b"2"  # type: ignore[union-attr]
            if not hasty._idle[0].quick:
                break
            assert time.monotonic() < deadline, "no poll timed out in 10 s of calls"
        assert hasty.get("polled").payload == b"2"  # type: ignore[union-attr]
        assert not hasty._idle[0].quick, "measured without polling: still slow"
    with sessiond.Client(daemon.socket, poll_window=0) as sleeper:
        assert sleeper.get("polled").payload == b"2"  # type: ignore[union-attr]


def test_json_lines_with_and_without_orjson(
    client: sessiond.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessiond import _wire

    assert _wire.orjson is not None, "the pinned test environment has orjson"
    # What orjson refuses, the standard library's encoder takes.
    assert _wire.dumps({"n": 2**70, "s": "é"}) == '{"n":1180591620717411303424,"s":"é"}'.encode()
    client.create("plain-json", detached=True)
    monkeypatch.setattr(_wire, "orjson", None)
    assert _wire.dumps({"s": "é"}) == '{"s":"é"}'.encode()
    c = client.checkpoint("plain-json", b"x", meta={"é": "ü"})
    assert client.get("plain-json", number=c.number).meta == {"é": "ü"}  # type: ignore[union-attr]
    with pytest.raises(sessiond.NotFound):
        client.show("nope")
