"""SessiondSaver: LangGraph's own conformance suite, the exclusive mode across processes,
and a real graph killed with SIGKILL mid-run and resumed in a new process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, wait_until

pytest.importorskip("langgraph.checkpoint.conformance")

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import Capability
from langgraph.checkpoint.conformance.report import ProgressCallbacks
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)

import sessiond
from sessiond.langgraph import SessiondSaver

PROGRAMS = Path(__file__).parent / "programs"


async def test_every_capability_of_the_conformance_suite_passes(daemon: Daemon) -> None:
    @checkpointer_test(name="SessiondSaver")
    async def factory() -> AsyncIterator[SessiondSaver]:
        yield SessiondSaver(daemon.socket)

    report = await validate(factory, progress=ProgressCallbacks.verbose())
    failures = {k: r.failures for k, r in report.results.items() if not r.passed}
    assert not failures, failures
    assert set(report.results) == {c.value for c in Capability}, "every capability ran"
    for name, result in report.results.items():
        assert result.detected and result.passed, name
        assert result.tests_failed == 0 and result.tests_passed > 0, name


def test_the_sync_methods(daemon: Daemon) -> None:
    saver = SessiondSaver(daemon.socket)
    tid = str(uuid.uuid4())
    stored = None
    for step in range(3):
        config = generate_config(tid)
        if stored:
            config["configurable"]["checkpoint_id"] = stored["configurable"]["checkpoint_id"]
        stored = saver.put(config, generate_checkpoint(), generate_metadata(step=step), {})
    assert stored is not None
    saver.put_writes(stored, [("ch", {"v": 1})], "task-1")
    latest = saver.get_tuple(generate_config(tid))
    assert latest is not None and latest.metadata["step"] == 2
    assert latest.pending_writes == [("task-1", "ch", {"v": 1})]
    assert latest.parent_config is not None
    assert [t.metadata["step"] for t in saver.list(generate_config(tid), limit=2)] == [2, 1]
    saver.copy_thread(tid, tid + "-copy")
    saver.prune([tid], strategy="keep_latest")
    assert len(list(saver.list(generate_config(tid)))) == 1
    assert len(list(saver.list(generate_config(tid + "-copy")))) == 3
    saver.delete_thread(tid)
    assert saver.get_tuple(generate_config(tid)) is None
    # Every namespace of a thread, and every thread, list too.
    assert len(list(saver.list({"configurable": {"thread_id": tid + "-copy"}}))) == 3
    assert len(list(saver.list(None))) == 3


def _exclusive_owner(daemon: Daemon, tid: str) -> subprocess.Popen[str]:
    """A process whose exclusive saver writes thread `tid`, then waits to be killed."""
    code = f"""
import sys
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint, generate_config, generate_metadata,
)
from sessiond.langgraph import SessiondSaver
saver = SessiondSaver({daemon.socket!r}, exclusive=True)
saver.put(generate_config({tid!r}), generate_checkpoint(), generate_metadata(), {{}})
print("written", flush=True)
sys.stdin.read()
"""
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "written"
    return p


def test_exclusive_savers_own_their_threads_until_they_die(daemon: Daemon) -> None:
    tid = str(uuid.uuid4())
    owner = _exclusive_owner(daemon, tid)
    mine = SessiondSaver(daemon.socket, exclusive=True)
    try:
        with pytest.raises(sessiond.OwnerAlive) as e:
            mine.put(generate_config(tid), generate_checkpoint(), generate_metadata(), {})
        assert e.value.pid == owner.pid
    finally:
        owner.kill()
        owner.wait()
    # Its owner died: the thread is taken over.
    name = mine._name(tid, "")
    wait_until(
        "the dead owner's thread to go stale", lambda: daemon.client().show(name).status == "stale"
    )
    mine.put(generate_config(tid), generate_checkpoint(), generate_metadata(step=1), {})
    assert daemon.client().show(name).owner_pid == os.getpid()
    # A saver that believes it still owns a thread another has taken over is fenced.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        daemon.client().resume(name, owner_pid=sleeper.pid, force=True)
        with pytest.raises(sessiond.Fenced):
            mine.put(generate_config(tid), generate_checkpoint(), generate_metadata(), {})
    finally:
        sleeper.kill()
        sleeper.wait()
    # A non-exclusive saver of the same process sees the thread whole.
    assert len(list(SessiondSaver(daemon.socket).list(generate_config(tid)))) == 2


def _run_graph(daemon: Daemon, thread: str, runs: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PROGRAMS / "graph.py"), daemon.socket, thread, str(runs), *extra],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ,
    )


def test_a_graph_killed_mid_run_resumes_in_a_new_process_to_the_same_end(
    daemon: Daemon, tmp_path: Path
) -> None:
    # Uninterrupted, for the state to compare with.
    whole = _run_graph(daemon, "whole", tmp_path / "whole.runs")
    out, _ = whole.communicate(timeout=120)
    expected: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert sorted(expected["log"]) == ["b", "c", "end", "start"]

    # Killed with SIGKILL in node c, once node b's write is stored.
    runs = tmp_path / "killed.runs"
    killed = _run_graph(daemon, "killed", runs, "--stop-in-c")
    assert killed.stdout is not None
    assert killed.stdout.readline().strip() == "ready"
    killed.kill()
    killed.wait()
    # Resumed by a process of its own: c runs again, b does not (its write was kept).
    resumed = _run_graph(daemon, "killed", runs)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0
    state = json.loads(out.strip().splitlines()[-1])
    assert state == expected
    ran = runs.read_text().split()
    assert (ran.count("start"), ran.count("b"), ran.count("c"), ran.count("end")) == (1, 1, 2, 1)
