"""Workers as separate processes: killed with SIGKILL mid-batch, stopped with SIGTERM, and
two of them racing on one queue."""

from __future__ import annotations

import json
import os
import signal
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

import semdb.alembic  # noqa: F401
from semdb import embedding_column
from semdb.db import libpq_uri
from semdb.sync import Worker

from .embedders import Recording

ROOT = Path(__file__).resolve().parent.parent
DIM = 32


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    __tablename__ = "process_tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "subject", model="tiny", dimension=DIM, sync="queued"
    )


@pytest.fixture()
def tickets(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            "process_tickets", "embedding", sources=["subject"], model="tiny", dimension=DIM
        )
    yield engine
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM semdb.queue"))
        Operations(MigrationContext.configure(connection)).drop_embedding_sync(
            "process_tickets", "embedding"
        )
    Base.metadata.drop_all(engine)


@pytest.fixture()
def model_args(tiny_bundle: Path) -> list[str]:
    return ["--bundle", str(tiny_bundle)]


def insert(engine: sa.Engine, n: int) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.insert(Ticket.__table__),
            [{"id": i, "subject": f"ticket number {i}"} for i in range(n)],
        )


def start_worker(engine: sa.Engine, log: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.worker_process", libpq_uri(engine.url), str(log), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"the worker exited early: {process.stderr.read() if process.stderr else ''}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the worker never started a batch")
        time.sleep(0.1)


def counts(engine: sa.Engine) -> tuple[int, int, int]:
    """(queued, claimable now, vectors stored)."""
    with engine.begin() as connection:
        queued = connection.execute(sa.text("SELECT count(*) FROM semdb.queue")).scalar()
        claimable = connection.execute(
            sa.text("SELECT count(*) FROM (SELECT 1 FROM semdb.queue FOR UPDATE SKIP LOCKED) s")
        ).scalar()
        stored = connection.execute(
            sa.text("SELECT count(*) FROM process_tickets WHERE embedding IS NOT NULL")
        ).scalar()
    return int(queued or 0), int(claimable or 0), int(stored or 0)


def test_a_worker_killed_mid_batch_loses_nothing(
    tickets: sa.Engine, tmp_path: Path, model_args: list[str], tiny_embedder: Any
) -> None:
    insert(tickets, 120)
    started = tmp_path / "started"
    process = start_worker(
        tickets, tmp_path / "killed.log", "--delay", "120", "--started", str(started), *model_args
    )
    wait_for(started, process)
    assert counts(tickets)[1] == 70  # 50 claimed by the worker, held in its transaction
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    deadline = time.monotonic() + 20
    while counts(tickets)[1] < 120 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counts(tickets) == (120, 120, 0)  # every claim released, nothing half-written
    recording = Recording(tiny_embedder)
    stats = Worker(tickets, recording).run(until_empty=True)
    assert stats.embedded == 120 and len(set(recording.texts)) == 120
    assert counts(tickets) == (0, 0, 120)


def test_sigterm_finishes_the_batch_in_hand_then_exits(
    tickets: sa.Engine, tmp_path: Path, model_args: list[str]
) -> None:
    insert(tickets, 120)
    started = tmp_path / "started"
    process = start_worker(
        tickets, tmp_path / "term.log", "--delay", "3", "--started", str(started), *model_args
    )
    wait_for(started, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["embedded"] == 50 and stats["batches"] == 1
    assert counts(tickets) == (70, 70, 50)


def test_two_worker_processes_embed_every_row_exactly_once(
    tickets: sa.Engine, tmp_path: Path, model_args: list[str]
) -> None:
    insert(tickets, 400)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    processes = [
        start_worker(
            tickets, log, "--until-empty", "--batch-size", "20", "--delay", "0.05", *model_args
        )
        for log in logs
    ]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    embedded = [log.read_text().splitlines() if log.exists() else [] for log in logs]
    assert embedded[0] and embedded[1], "both workers should have taken part"
    everything = embedded[0] + embedded[1]
    assert len(everything) == 400 and len(set(everything)) == 400
    assert counts(tickets) == (0, 0, 400)
