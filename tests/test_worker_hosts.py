"""Workers on separate hosts: three worker processes, each in a network namespace of its own
(a veth pair to the test host), drain one queue over TCP on a server listening on TCP (a
LocalServer from the embedded binaries). Every row is embedded once; a worker whose link is
cut mid-batch loses nothing: the server drops its connection (TCP keepalives) and the rows
it held are claimed again by the others.

Needs root and ``ip netns``; skips with the reason where namespaces cannot be made.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import semdb
import semdb.alembic
from semdb import embedding_column
from semdb.db import libpq_uri
from semdb.db.migrate import upgrade
from semdb.db.servers import LocalServer

ROOT = Path(__file__).resolve().parent.parent
DIM = 32
PORT = 55432
SUBNET = "10.231"
TAG = f"{os.getpid() % 10000}"


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "host_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "subject", model="tiny", dimension=DIM, sync="queued"
    )


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Host:
    """A network namespace joined to the test host by a veth pair: 10.231.N.2 in it,
    10.231.N.1 on the test host (where the server listens)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.namespace = f"semdb-{TAG}-{index}"
        self.outer = f"sd{TAG}h{index}"
        self.inner = f"sd{TAG}n{index}"
        self.server_address = f"{SUBNET}.{index}.1"

    def create(self) -> None:
        ip("netns", "add", self.namespace)
        ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        ip("link", "set", self.inner, "netns", self.namespace)
        ip("addr", "add", f"{self.server_address}/30", "dev", self.outer)
        ip("link", "set", self.outer, "up")
        inside = ["netns", "exec", self.namespace, "ip"]
        ip(*inside, "addr", "add", f"{SUBNET}.{self.index}.2/30", "dev", self.inner)
        ip(*inside, "link", "set", self.inner, "up")
        ip(*inside, "link", "set", "lo", "up")

    def cut(self) -> None:
        ip("link", "set", self.outer, "down")

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=30)

    def start_worker(
        self, url: sa.URL, log: Path, bundle: Path, *extra: str
    ) -> subprocess.Popen[str]:
        worker_url = libpq_uri(url.set(host=self.server_address, port=PORT, query={}))
        return subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-m", "tests.worker_process"]
            + [worker_url, str(log), "--bundle", str(bundle), *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[Host]]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    made = [Host(i) for i in (1, 2, 3)]
    try:
        for host in made:
            host.create()
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        for host in made:
            host.delete()
        detail = getattr(exc, "stderr", "") or str(exc)
        pytest.skip(f"cannot make network namespaces here: {detail.strip()}")
    yield made
    for host in made:
        host.delete()


@pytest.fixture(scope="module")
def tcp_server(hosts: list[Host], tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """A server listening on TCP (all addresses), trusting the namespaces' network; TCP
    keepalives so that it notices a vanished client within seconds."""
    server = LocalServer(
        tmp_path_factory.mktemp("tcp-server"),
        port=PORT,
        listen="*",
        trust=[f"{SUBNET}.0.0/16"],
        settings={
            "tcp_keepalives_idle": "1",
            "tcp_keepalives_interval": "1",
            "tcp_keepalives_count": "3",
            "tcp_user_timeout": "3000",
        },
    )
    server.initdb()
    server.start()
    admin = sa.create_engine(server.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql("CREATE DATABASE semdb")
    admin.dispose()
    engine = semdb.create_engine(server.url())
    upgrade(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            "host_jobs", "embedding", sources=["subject"], model="tiny", dimension=DIM
        )
    yield engine
    engine.dispose()
    server.stop()


def reset(engine: sa.Engine, n: int) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM semdb.queue"))
        connection.execute(sa.text("DELETE FROM host_jobs"))
        connection.execute(
            sa.insert(Job.__table__), [{"id": i, "subject": f"job number {i}"} for i in range(n)]
        )


def counts(engine: sa.Engine) -> tuple[int, int, int]:
    """(queued, claimable now, vectors stored)."""
    with engine.begin() as connection:
        queued = connection.execute(sa.text("SELECT count(*) FROM semdb.queue")).scalar()
        claimable = connection.execute(
            sa.text("SELECT count(*) FROM (SELECT 1 FROM semdb.queue FOR UPDATE SKIP LOCKED) s")
        ).scalar()
        stored = connection.execute(
            sa.text("SELECT count(*) FROM host_jobs WHERE embedding IS NOT NULL")
        ).scalar()
    return int(queued or 0), int(claimable or 0), int(stored or 0)


def finish(process: subprocess.Popen[str], timeout: float = 300) -> None:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-2000:]


def test_three_hosts_embed_every_row_exactly_once(
    hosts: list[Host], tcp_server: sa.Engine, tmp_path: Path, tiny_bundle: Path
) -> None:
    reset(tcp_server, 300)
    logs = [tmp_path / f"host{host.index}.log" for host in hosts]
    processes = [
        host.start_worker(
            tcp_server.url, log, tiny_bundle, "--until-empty", "--batch-size", "10",
            "--delay", "0.1",
        )
        for host, log in zip(hosts, logs, strict=True)
    ]  # fmt: skip
    for process in processes:
        finish(process)
    embedded = [log.read_text().splitlines() if log.exists() else [] for log in logs]
    assert all(embedded), f"every host should have taken part: {[len(e) for e in embedded]}"
    everything = [text for part in embedded for text in part]
    assert len(everything) == 300 and len(set(everything)) == 300
    assert counts(tcp_server) == (0, 0, 300)


def test_a_host_cut_off_mid_batch_loses_nothing(
    hosts: list[Host], tcp_server: sa.Engine, tmp_path: Path, tiny_bundle: Path, tiny_embedder: Any
) -> None:
    reset(tcp_server, 120)
    cut_host, *others = hosts
    started = tmp_path / "started"
    stuck = cut_host.start_worker(
        tcp_server.url, tmp_path / "cut.log", tiny_bundle, "--batch-size", "40",
        "--delay", "600", "--started", str(started),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert stuck.poll() is None, stuck.stderr.read() if stuck.stderr else ""
            assert time.monotonic() < deadline, "the worker never started a batch"
            time.sleep(0.1)
        assert counts(tcp_server)[:2] == (120, 80)  # 40 claimed by the worker on host 1
        cut_host.cut()  # mid-batch: the worker embeds (600 s), its transaction holds 40 rows
        cut_at = time.monotonic()
        while counts(tcp_server)[1] < 120:
            assert time.monotonic() - cut_at < 60, "the cut worker's claims were never released"
            time.sleep(0.2)
        released_after = time.monotonic() - cut_at
        logs = [tmp_path / f"after{host.index}.log" for host in others]
        processes = [
            host.start_worker(
                tcp_server.url, log, tiny_bundle, "--until-empty", "--batch-size", "10"
            )
            for host, log in zip(others, logs, strict=True)
        ]
        for process in processes:
            finish(process)
        embedded = [text for log in logs if log.exists() for text in log.read_text().splitlines()]
        assert len(embedded) == 120 and len(set(embedded)) == 120
        assert counts(tcp_server) == (0, 0, 120)
        assert not (tmp_path / "cut.log").exists()  # the cut worker never got to write
        print(f"claims released {released_after:.1f} s after the cut")
    finally:
        stuck.kill()
        stuck.communicate(timeout=30)
        subprocess.run(["ip", "link", "set", cut_host.outer, "up"], capture_output=True)
