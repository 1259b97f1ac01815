"""The ``FeedbackStore`` contract on ``PostgresStore`` against a real PostgreSQL server that this
module starts, and what a store outage does to the store and to the spooled recorder.

The server: the binaries the ``pgserver`` wheel ships (a dev dependency, so a fresh machine
needs nothing else), else Debian's (``/usr/lib/postgresql/*/bin``); the module is skipped, with
the reason, when neither works. pgserver's own ``get_server`` is not used: as root it adds a
system user with ``useradd``, opens every parent folder of its data directory to everyone, and
listens only on a Unix socket. Instead ``initdb`` and ``postgres`` run directly, on a free
loopback port with password authentication, in a temporary folder; as root (PostgreSQL refuses
to run as root) as the ``nobody`` user through ``setpriv``, in a folder that user owns.
"""

from __future__ import annotations

import asyncio
import glob
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from tests.flywheel_contract import StoreContract, make_answer, make_feedback

from ragfleet.flywheel.postgres_store import PostgresStore
from ragfleet.flywheel.recorder import SpooledRecorder
from ragfleet.flywheel.store import FeedbackStore, open_store
from ragfleet.runtime.errors import NotFound, Unavailable

pytestmark = pytest.mark.integration

NOBODY = 65534
USER = "ragfleet"


def _candidate_bin_dirs() -> list[Path]:
    """Folders holding ``initdb`` and ``postgres``: the pgserver wheel's first, then Debian's
    newest first, then whatever is on PATH."""
    found = []
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        found.append(Path(spec.origin).parent / "pginstall" / "bin")
    found += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    if initdb := shutil.which("initdb"):
        found.append(Path(initdb).resolve().parent)
    return [
        d for d in dict.fromkeys(found) if (d / "initdb").is_file() and (d / "postgres").is_file()
    ]


def _as_unprivileged() -> list[str]:
    """The command prefix that drops root to ``nobody`` (nothing when not root)."""
    if os.geteuid() != 0:
        return []
    if setpriv := shutil.which("setpriv"):
        return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if runuser := shutil.which("runuser"):
        return [runuser, "-u", "nobody", "--"]
    pytest.skip("running as root, and neither setpriv nor runuser is here to drop to nobody")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """A throw-away PostgreSQL cluster in ``folder``, on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.password = secrets.token_urlsafe(16)
        self.port = _free_port()
        self.prefix = _as_unprivileged()
        self.bin_dir = self._init()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _init(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        password_file = self.folder / "password"
        password_file.write_text(self.password + "\n")
        if os.geteuid() == 0:
            # nobody must reach and own the folder; the parents stay as they are but for o+x.
            for path in (self.folder, password_file):
                os.chown(path, NOBODY, NOBODY)
            self.folder.chmod(0o700)
            for parent in self.folder.parents:
                if parent.stat().st_mode & 0o001 == 0:
                    parent.chmod(parent.stat().st_mode | 0o001)
        failures = []
        for bin_dir in _candidate_bin_dirs():
            data = self.folder / "data"
            shutil.rmtree(data, ignore_errors=True)
            result = subprocess.run(
                [
                    *self.prefix,
                    str(bin_dir / "initdb"),
                    f"--pgdata={data}",
                    f"--username={USER}",
                    f"--pwfile={password_file}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                env={"PATH": os.environ.get("PATH", ""), "HOME": str(self.folder)},
                timeout=60,
            )
            if result.returncode == 0:
                return bin_dir
            failures.append(f"{bin_dir}: {result.stderr.strip()[-300:]}")
        pytest.skip(
            "no PostgreSQL server could be set up (install the dev extra for pgserver, or "
            "Debian's postgresql): " + ("; ".join(failures) or "no initdb found")
        )

    def start(self) -> None:
        log = (self.folder / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                *self.prefix,
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.folder / "data"),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(self.folder)},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = (self.folder / "server.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"PostgreSQL did not start:\n{tail}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        # SIGINT: fast shutdown (clients are disconnected, the data is written).
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("flywheel-postgres"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _new_database(server: PostgresServer) -> str:
    name = f"flywheel_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(server.url(), autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    return server.url(name)


class TestPostgresStore(StoreContract):
    @pytest.fixture
    async def store(self, postgres: PostgresServer) -> AsyncIterator[FeedbackStore]:
        store = open_store(await _new_database(postgres))
        assert isinstance(store, PostgresStore)
        yield store
        await store.close()


async def test_stores_starting_together_create_the_tables_once(postgres: PostgresServer) -> None:
    url = await _new_database(postgres)
    stores = [PostgresStore(url) for _ in range(4)]
    answers = [make_answer() for _ in stores]
    await asyncio.gather(*(s.record(a) for s, a in zip(stores, answers, strict=True)))
    for answer in answers:
        assert await stores[0].get_answer("acme", answer.answer_id) == answer
    await asyncio.gather(*(s.close() for s in stores))


async def test_a_wrong_password_is_unavailable_without_the_password(
    postgres: PostgresServer,
) -> None:
    wrong = "not-" + postgres.password
    store = PostgresStore(postgres.url().replace(postgres.password, wrong), timeout_s=1.0)
    with pytest.raises(Unavailable) as caught:
        await store.record(make_answer())
    assert caught.value.message.startswith(f"feedback store postgresql://{USER}:***@127.0.0.1:")
    assert wrong not in caught.value.message
    await store.close()


async def test_an_outage_fails_calls_and_the_recorder_delivers_afterwards(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = await _new_database(postgres)
    store = PostgresStore(url, timeout_s=1.0)
    before = make_answer()
    await store.record(before)
    recorder = SpooledRecorder(store, tmp_path / "spool", retry_initial_s=0.1, retry_max_s=0.5)
    await recorder.start()
    postgres.stop()
    try:
        with pytest.raises(Unavailable) as caught:
            await store.record(make_answer())
        assert "feedback store postgresql://ragfleet:***@" in caught.value.message
        assert postgres.password not in caught.value.message
        with pytest.raises(Unavailable):
            await store.add_feedback(make_feedback(before))
        during = [make_answer() for _ in range(5)]
        for answer in during:
            recorder.submit(answer)
        await asyncio.sleep(1.5)
        assert recorder.spooled() == 5
    finally:
        postgres.start()
    deadline = time.monotonic() + 20
    while recorder.spooled():
        assert time.monotonic() < deadline, "the spool was not delivered after the outage"
        await asyncio.sleep(0.1)
    await recorder.aclose()
    for answer in during:
        assert await store.get_answer("acme", answer.answer_id) == answer
    await store.add_feedback(make_feedback(during[0], 5))
    with pytest.raises(NotFound):
        await store.get_answer("globex", during[0].answer_id)
    await store.close()
