"""The embedded server: on demand, shared by processes, recovering from SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

import semdb
from semdb.db import EmbeddedServer, libpq_uri
from semdb.db.embedded import SYSTEM_USER
from semdb.errors import ExtensionMissingError

from .conftest import run_semdb

HOLD = textwrap.dedent(
    """
    import os, sys, semdb
    engine = semdb.create_engine()
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    print(os.getpid(), flush=True)
    sys.stdin.readline()
    """
)


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[Path]:
    """A SEMDB_HOME of its own; whatever runs there is stopped afterwards."""
    path = tmp_path / "home"
    yield path
    EmbeddedServer(path).stop()


def embedded_env(home: Path) -> dict[str, str]:
    return {**os.environ, "SEMDB_HOME": str(home), "SEMDB_DATABASE_URL": ""}


def start_holder(home: Path) -> tuple[subprocess.Popen[str], int]:
    """A process that uses the embedded server until its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=embedded_env(home),
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip(), "the holder did not start"
    return process, int(line)


def test_start_gives_a_database_with_pgvector(home: Path) -> None:
    server = EmbeddedServer(home)
    url = server.start()
    with psycopg.connect(libpq_uri(url)) as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        version = connection.execute("SELECT extversion FROM pg_extension").fetchall()
        distance = connection.execute("SELECT '[1,0]'::vector <=> '[0,1]'::vector").fetchone()
    assert ("0.8.5",) in version or any(v[0].startswith("0.8") for v in version)
    assert distance == (1.0,)
    state = server.status()
    assert state.running and state.pinned and state.initialised
    server.stop()
    assert not server.status().running


def test_default_without_url_is_the_embedded_server(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEMDB_DATABASE_URL", raising=False)
    monkeypatch.setenv("SEMDB_HOME", str(home))
    engine = semdb.create_engine()
    try:
        assert engine.url.query["host"] == str(EmbeddedServer(home).socket_dir)
        with engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT current_database()")) == "semdb"
        assert os.getpid() in EmbeddedServer(home).status().holders
    finally:
        engine.dispose()
        EmbeddedServer(home).release()
    assert not EmbeddedServer(home).status().running


def test_processes_share_the_server_and_the_last_one_stops_it(home: Path) -> None:
    first, first_pid = start_holder(home)
    second, second_pid = start_holder(home)
    server = EmbeddedServer(home)
    state = server.status()
    assert state.running
    assert set(state.holders) == {first_pid, second_pid}
    postmaster = state.pid

    first.communicate("\n", timeout=30)
    state = server.status()
    assert state.running and state.pid == postmaster
    assert state.holders == (second_pid,)

    second.communicate("\n", timeout=30)
    assert not server.status().running


def test_a_holder_killed_with_sigkill_does_not_keep_the_server_forever(home: Path) -> None:
    process, pid = start_holder(home)
    os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert EmbeddedServer(home).postmaster_pid() is not None  # orphaned, still running

    status = run_semdb("db", "status", env=embedded_env(home))
    assert status.returncode == 0, status.stderr
    assert f"removed holders that died without stopping: {pid}" in status.stdout
    assert "0.8" in status.stdout
    # the status command was the last holder: it stopped the server on its way out
    state = EmbeddedServer(home).status()
    assert not state.running
    assert state.holders == ()


def test_a_killed_server_is_restarted_on_demand(home: Path) -> None:
    server = EmbeddedServer(home)
    server.start()
    pid = server.postmaster_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server.postmaster_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    url = server.start()  # stale postmaster.pid and shared memory are recovered
    with psycopg.connect(libpq_uri(url)) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_a_stale_pid_file_naming_a_live_process_does_not_block_the_start(home: Path) -> None:
    """After a crash (or a container restart) postmaster.pid may name a pid that another,
    unrelated process has now: the server still starts, and that process is left alone."""
    server = EmbeddedServer(home)
    server.start()
    pid = server.postmaster_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server.postmaster_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    # A process of the server's own user (as root, semdb runs the server as SYSTEM_USER):
    # PostgreSQL takes a live process of its user as another postmaster.
    as_server = {"user": SYSTEM_USER} if os.geteuid() == 0 else {}
    other = subprocess.Popen(["sleep", "60"], **as_server)  # type: ignore[call-overload]
    try:
        lock = home / "pgdata" / "postmaster.pid"
        lines = lock.read_text().splitlines()
        lock.write_text("\n".join([str(other.pid), *lines[1:]]) + "\n")
        url = server.start()
        with psycopg.connect(libpq_uri(url)) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
        assert other.poll() is None  # not signalled
    finally:
        other.kill()
        other.wait()


def test_a_long_home_path_puts_the_socket_in_a_short_folder(tmp_path: Path) -> None:
    home = tmp_path / ("deep-" * 20) / "home"
    server = EmbeddedServer(home)
    assert len(str(server.pgdata)) > 100
    assert server.socket_dir != server.pgdata
    try:
        url = server.start()
        with psycopg.connect(libpq_uri(url)) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "marker", ["$(touch $SEMDB_CANARY)", "`touch $SEMDB_CANARY`", '"q" \\ b;c\'d, e']
)
def test_no_shell_sees_the_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    """A SEMDB_HOME whose name holds command substitution, quotes, a backslash or a comma
    runs no command: the server starts on that very folder."""
    drop = tmp_path / "drop"  # writable by the server's system user when running as root
    drop.mkdir()
    drop.chmod(0o777)
    canary = drop / "canary"
    monkeypatch.setenv("SEMDB_CANARY", str(canary))
    home = tmp_path / f"a {marker} b" / "home"
    server = EmbeddedServer(home)
    try:
        url = server.start()
        with psycopg.connect(libpq_uri(url)) as connection:
            data = connection.execute("SHOW data_directory").fetchone()
        assert data == (str(home / "pgdata"),)
        assert server.status().running
    finally:
        server.stop()
    assert not server.status().running
    assert not canary.exists(), "a shell ran the command in the folder's name"


SYSTEM_POSTGRES = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@pytest.mark.skipif(
    not SYSTEM_POSTGRES
    or (SYSTEM_POSTGRES[-1].parents[3] / "share/postgresql").exists()
    and any(Path("/usr/share/postgresql").glob("*/extension/vector.control")),
    reason="needs a system PostgreSQL without pgvector",
)
def test_a_server_without_pgvector_is_refused_with_the_fix(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "plain", binaries=SYSTEM_POSTGRES[-1].parent)
    try:
        url = server.start().set(database="postgres")
        with pytest.raises(ExtensionMissingError) as info:
            semdb.create_engine(url)
        assert "pgvector is not available" in info.value.one_line()
        assert "Fix: install pgvector" in info.value.one_line()

        env = {"SEMDB_DATABASE_URL": libpq_uri(url)}
        result = run_semdb("db", "upgrade", env=env)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "pgvector" in lines[0] and "Fix:" in lines[0]
    finally:
        server.stop()
