"""A worker in its own process, as ``semdb worker`` runs, with a recording embedder.

    python -m tests.worker_process URL LOG --bundle PATH [--delay S] [--started FILE]
                                   [--until-empty] [--batch-size N]

Prints the worker's statistics as JSON when it stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import semdb
from semdb.sync.worker import Worker, install_signal_handlers

from .embedders import Recording, load_tiny_embedder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("log", type=Path)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--started", type=Path)
    parser.add_argument("--until-empty", action="store_true")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    embedder = Recording(
        load_tiny_embedder(args.bundle),
        log=args.log,
        delay=args.delay,
        started=args.started,
    )
    engine = semdb.create_engine(args.url)
    worker = Worker(engine, embedder, batch_size=args.batch_size, poll_seconds=0.2)
    install_signal_handlers(worker)
    stats = worker.run(until_empty=args.until_empty)
    engine.dispose()
    print(json.dumps(dataclasses.asdict(stats)), flush=True)


if __name__ == "__main__":
    main()
