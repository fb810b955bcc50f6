"""The real sessiond, started for each test on a socket and state directory of its own.

The binary is ``$SESSIOND_BIN``, else the workspace's ``target/debug/sessiond`` (built by
``cargo build``; README's test command builds it first).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sessiond

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0


def binary() -> str:
    explicit = os.environ.get("SESSIOND_BIN")
    path = Path(explicit) if explicit else ROOT / "target" / "debug" / "sessiond"
    if not path.exists():
        pytest.fail(f"no sessiond binary at {path}: run `cargo build` first, or set SESSIOND_BIN")
    return str(path)


def wait_until(what: str, check: object, timeout: float = START_TIMEOUT) -> None:
    """Polls ``check()`` until it is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _daemon_env() -> dict[str, str]:
    """The environment without what would point the daemon elsewhere (the tests' socket, a
    systemd notify socket)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SESSIOND_", "LISTEN_")) and k != "NOTIFY_SOCKET"
    }


class Daemon:
    def __init__(self, root: Path, *args: str) -> None:
        self.socket = str(root / "run" / "sessiond.sock")
        self.state = str(root / "state")
        self.log = root / "sessiond.log"
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = root / "config.toml"
        self.config.write_text("")

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary(),
                    "--socket",
                    self.socket,
                    "--state-dir",
                    self.state,
                    "--config",
                    str(self.config),
                    *self.args,
                ],
                stdout=log,
                stderr=log,
                env=_daemon_env(),
            )

        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"sessiond exited:\n{self.log.read_text()}")
            try:
                sessiond.Client(self.socket, timeout=1).ping()
                return True
            except sessiond.ConnectionFailed:
                return False

        wait_until("sessiond to answer", answers)

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.proc = None

    def client(self) -> sessiond.Client:
        return sessiond.Client(self.socket)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    d.start()
    try:
        yield d
    finally:
        d.kill9()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[sessiond.Client]:
    with daemon.client() as c:
        yield c
