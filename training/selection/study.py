"""The study in semdb's PostgreSQL: Optuna's RDB storage in a schema of its own.

- **Storage.** :func:`open_storage` creates the schema (``semdb_optuna`` by default) and
  points Optuna's tables at it through the connection's ``search_path`` (a libpq
  ``options`` setting on every connection; nothing else of semdb's lives there).
- **Many processes.** Every process that runs ``--study NAME`` works on the same study. A
  PostgreSQL advisory lock per study (:class:`StudyLock`) is held while a process counts the
  trials and asks Optuna for the next one, so the study never gets more than the trials
  asked for, and the TPE sampler (with ``constant_liar``) sees the others' running trials.
- **Crashes.** Each running trial records a heartbeat; a trial whose process died (no
  heartbeat for ``3 x heartbeat`` seconds) is marked FAIL and its parameters are queued
  again, once, by Optuna's ``RetryHeartbeatStaleTrialCallback``. A process that finds no
  more trials to start waits for the running ones, so a resumed search does not end while a
  dead process's trial is still counted as running.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import sql

from semdb.errors import SelectionError

logger = logging.getLogger(__name__)

SCHEMA = "semdb_optuna"
SIGNATURE_ATTR = "semdb_selection"  # the study's user attribute: space, folds, data
FINAL_ATTR = "semdb_final"  # who retrains the chosen configuration, and whether it is done
DEFAULT_HEARTBEAT = 20  # seconds; a trial is stale after 3 beats missed
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _sqlalchemy_url(url: str | None) -> sa.URL:
    from semdb.db import resolve_url

    return resolve_url(url)


def create_schema(url: sa.URL, schema: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            statement = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            connection.exec_driver_sql(statement.as_string())
    finally:
        engine.dispose()


def open_storage(
    url: str | None = None, *, schema: str = SCHEMA, heartbeat: int = DEFAULT_HEARTBEAT
) -> Any:
    """Optuna's RDBStorage on semdb's database (``url``, else SEMDB_DATABASE_URL, else the
    embedded server), its tables in ``schema``."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    _quiet_optuna()
    if not _NAME.match(schema):
        raise SelectionError(
            f"the study schema {schema!r} is not a plain lower-case SQL name",
            fix="use letters, digits and underscores, for example semdb_optuna",
        )
    if heartbeat < 1:
        raise SelectionError(f"the heartbeat must be at least 1 second, not {heartbeat}")
    resolved = _sqlalchemy_url(url)
    with StudyLock(resolved, f"schema:{schema}").held():  # two first processes: one creates
        create_schema(resolved, schema)
        return optuna.storages.RDBStorage(
            resolved.render_as_string(hide_password=False),
            engine_kwargs={
                "connect_args": {"options": f"-csearch_path={schema}"},
                "pool_pre_ping": True,
            },
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )


class StudyLock:
    """A PostgreSQL advisory lock (session level, on a connection of its own) named by text."""

    def __init__(self, url: sa.URL, name: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
        self.key = f"semdb.selection:{name}"
        self.connection: sa.Connection | None = None

    def acquire(self) -> None:
        if self.connection is None:
            self.connection = self.engine.connect()
            self.connection.execute(
                sa.select(sa.func.pg_advisory_lock(sa.func.hashtext(sa.literal(self.key))))
            )

    def release(self) -> None:
        if self.connection is not None:
            connection, self.connection = self.connection, None
            try:
                connection.execute(
                    sa.select(sa.func.pg_advisory_unlock(sa.func.hashtext(sa.literal(self.key))))
                )
            finally:
                connection.close()

    @property
    def is_held(self) -> bool:
        return self.connection is not None

    @contextmanager
    def held(self) -> Iterator[StudyLock]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()
            self.engine.dispose()


def study_lock(storage: Any, name: str) -> StudyLock:
    url = sa.make_url(storage.url)
    return StudyLock(url, f"study:{name}")


def open_study(
    storage: Any,
    name: str,
    signature: dict[str, Any],
    *,
    sampler: Any,
    pruner: Any,
    first_trial: dict[str, Any] | None = None,
) -> Any:
    """Create the study ``name``, or load it and check that it searches the same space.

    ``signature`` (the space, the folds, the data) is stored in the study's user attributes;
    a study that exists with another signature is refused before anything trains.
    ``first_trial`` (parameters) is queued as the new study's first trial.
    """
    import optuna

    with study_lock(storage, name).held():
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
        stored = study.user_attrs.get(SIGNATURE_ATTR)
        if stored is None:
            if study.trials:
                raise SelectionError(
                    f"the study {name!r} exists and was not started by semdb",
                    fix="give another --study name",
                )
            study.set_user_attr(SIGNATURE_ATTR, signature)
            if first_trial:
                study.enqueue_trial(first_trial, user_attrs={"origin": "defaults"})
            return study
        for key in signature:
            if stored.get(key) != signature[key]:
                what = {"space": "search space", "folds": "number of folds"}.get(key, key)
                raise SelectionError(
                    f"the study {name!r} exists with another {what}: "
                    f"{json.dumps(stored.get(key), sort_keys=True)} there, "
                    f"{json.dumps(signature[key], sort_keys=True)} now",
                    fix=f"give another --study name, or the {what} the study was started with",
                )
        return study


@dataclass
class TrialCounts:
    finished: int  # complete or pruned
    running: int
    failed: int
    waiting: int


def count_trials(study: Any) -> TrialCounts:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return TrialCounts(
        finished=sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states),
        running=states.count(TrialState.RUNNING),
        failed=states.count(TrialState.FAIL),
        waiting=states.count(TrialState.WAITING),
    )


def run_trials(
    study: Any,
    storage: Any,
    objective: Callable[[Any], float],
    trials: int,
    *,
    poll: float = 2.0,
    on_trial: Callable[[Any], None] | None = None,
) -> int:
    """Run trials of ``study`` until it holds ``trials`` finished ones; how many ran here.

    Finished (complete or pruned) and running trials count; failed ones do not (a trial of
    a dead process is queued again). With none left to start but some running elsewhere,
    this waits for them: a dead process's trial turns stale, is queued again, and run here.
    """
    import optuna

    _quiet_optuna()
    lock = study_lock(storage, study.study_name)
    ran = 0
    try:
        while True:
            lock.acquire()
            try:
                optuna.storages.fail_stale_trials(study)
                counts = count_trials(study)
                if counts.finished + counts.running < trials:

                    def locked_objective(trial: Any) -> float:
                        lock.release()  # the trial exists (RUNNING): others may ask now
                        if on_trial is not None:
                            on_trial(trial)
                        return objective(trial)

                    study.optimize(locked_objective, n_trials=1, catch=(), gc_after_trial=True)
                    ran += 1
                    continue
            finally:
                lock.release()
            if counts.running == 0:
                return ran
            time.sleep(poll)
    finally:
        lock.engine.dispose()


def claim_final(study: Any, storage: Any, output: str, finished: int) -> bool:
    """Whether this process retrains the chosen configuration (one process per study does)."""
    with study_lock(storage, study.study_name).held():
        claim = study.user_attrs.get(FINAL_ATTR)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "output": output}
        if claim is not None and claim.get("trials") == finished:
            if claim.get("state") == "done":
                return False
            same_host = claim.get("host") == me["host"]
            if not (same_host and not _alive(int(claim.get("pid", 0)))):
                return False  # another live process is on it
        study.set_user_attr(
            FINAL_ATTR, {**me, "state": "running", "trials": finished, "since": time.time()}
        )
        return True


def finish_final(study: Any, summary: dict[str, Any]) -> None:
    claim = dict(study.user_attrs.get(FINAL_ATTR) or {})
    claim.update(state="done", **summary)
    study.set_user_attr(FINAL_ATTR, claim)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
