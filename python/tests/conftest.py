"""The real sessiond, started for each test on a socket and state directory of its own.

The binary is ``$SESSIOND_BIN``, else the workspace's ``target/debug/sessiond`` (built by
``cargo build``; README's test command builds it first). With
``SESSIOND_TEST_STORE=postgres`` every daemon keeps its sessions in a database of its own on
a throwaway PostgreSQL cluster (``initdb``/``pg_ctl`` on a temporary directory, a Unix
socket only), started once for the run.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
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


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        if not versions:
            pytest.fail(
                f"{name} is not installed: the shared store's tests need a PostgreSQL server "
                "(Debian package postgresql)"
            )
        found = str(versions[-1])
    return found


class Cluster:
    """A throwaway PostgreSQL cluster serving a Unix socket in a temporary directory."""

    PORT = 5432

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sessiond-pg-"))
        self.data = self.dir / "data"
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.user:
            shutil.chown(self.dir, "postgres")
        self.databases = 0
        self._run(
            _pg_tool("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self._run(
            _pg_tool("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            f"-k {self.dir} -c listen_addresses= -p {self.PORT}",
            "-w",
            "-l",
            str(self.dir / "server.log"),
            "start",
        )

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self.user, *argv], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed: {done.stderr}")

    def url(self, db: str) -> str:
        return f"postgresql:///{db}?host={self.dir}&port={self.PORT}&user=postgres"

    def new_database(self) -> str:
        self.databases += 1
        db = f"t{self.databases}"
        done = subprocess.run(
            [_pg_tool("psql"), self.url("postgres"), "-c", f"CREATE DATABASE {db}"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.fail(f"CREATE DATABASE failed: {done.stderr}")
        return self.url(db)

    def stop(self) -> None:
        subprocess.run(
            [*self.user, _pg_tool("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


_cluster: Cluster | None = None


def _store_args() -> list[str]:
    """The flags that put a daemon on the shared store when the run asks for it."""
    global _cluster
    if os.environ.get("SESSIOND_TEST_STORE") != "postgres":
        return []
    if _cluster is None:
        _cluster = Cluster()
        atexit.register(_cluster.stop)
    url = _cluster.new_database()
    return ["--store", url, "--host-id", f"pytest-{os.getpid()}-{_cluster.databases}"]


class Daemon:
    def __init__(self, root: Path, *args: str) -> None:
        self.socket = str(root / "run" / "sessiond.sock")
        self.state = str(root / "state")
        self.log = root / "sessiond.log"
        self.args = [*args, *_store_args()]
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
