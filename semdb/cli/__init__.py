"""The ``semdb`` command line: one module per command group, each thin over library calls.

Errors semdb recognises print as one line with the fix (no traceback) and exit with 1.
Heavy dependencies (ONNX Runtime, torch) are imported inside the commands that need them.
"""

from __future__ import annotations

import os
from typing import Any

import click
from sqlalchemy.exc import OperationalError

from semdb import __version__
from semdb.errors import SemdbError


class SemdbGroup(click.Group):
    """A click group that turns semdb's own errors into one line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SemdbError as exc:
            raise click.ClickException(exc.one_line()) from exc
        except OperationalError as exc:
            from semdb.db.engine import explain_connection_error

            raise click.ClickException(explain_connection_error(exc).one_line()) from exc


@click.group(cls=SemdbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="semdb")
def cli() -> None:
    """semdb: a semantic database on PostgreSQL and pgvector.

    The database is SEMDB_DATABASE_URL when set, else an embedded PostgreSQL server
    (data under SEMDB_HOME, default ./.semdb) started on demand.
    """


def _register() -> None:
    from semdb.cli.backfill import backfill
    from semdb.cli.db import db
    from semdb.cli.embed import embed
    from semdb.cli.keyword import keyword
    from semdb.cli.model import model
    from semdb.cli.monitor import monitor
    from semdb.cli.quickstart import quickstart
    from semdb.cli.sql import sql_command
    from semdb.cli.train import COMMANDS as TRAINING_COMMANDS
    from semdb.cli.tune import tune_hybrid_command
    from semdb.cli.worker import worker

    cli.add_command(quickstart)
    cli.add_command(db)
    cli.add_command(embed)
    cli.add_command(model)
    cli.add_command(worker)
    cli.add_command(monitor)
    cli.add_command(backfill)
    cli.add_command(sql_command)
    cli.add_command(tune_hybrid_command)
    cli.add_command(keyword)
    for command in TRAINING_COMMANDS:
        cli.add_command(command)


_register()


def main() -> None:
    # semdb reads models from local folders and PyPI packages only: a hub is never asked,
    # even by libraries that would (transformers looks up configurations when online).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cli(prog_name="semdb")
