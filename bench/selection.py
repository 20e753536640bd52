"""Model selection benchmark (named selection.py: a script called select.py would shadow the
standard library's select module): does the searched configuration beat the default, and do two
processes share a study's work?

    python bench/selection.py                  # 35-40 min on 2 cores shared at load ~10
    python bench/selection.py --trials 4 --parallel-trials 2   # a quicker look

On debdesc (``../shared/data/debdesc``), sized for a loaded 2-core machine:

1. **Data.** A seeded sample of ``--pool`` training queries (``qrels/train.tsv``) with their
   documents and random others (``--pool-corpus`` documents), and a seeded sample of
   ``--test-queries`` test queries (``qrels/test.tsv``) against their documents and random
   others (``--test-corpus``). The test sample is read only after the search.
2. **Search.** ``--trials`` trials, ``--folds``-fold cross-validation by query, one process,
   every trial ``--steps`` steps (fixed in the space: the comparison is at one step budget).
   Trial 0 is bench/train.py's configuration (the default).
3. **Test.** The chosen configuration and the default, each retrained on the whole pool for
   ``--steps`` steps, scored on the test sample (PyTorch encoder, exact pgvector search).
4. **Processes.** Two more studies of ``--parallel-trials`` trials each over a space whose
   parameters do not change a trial's cost (learning rate, warmup, scale): one run by one
   process, one by two processes at once; the wall time of each and their ratio.

Writes ``bench/results/select.json`` (and ``select.png``, the search's plot) and prints a
table. Every process trains on one thread (OMP_NUM_THREADS=1), as workers on separate
hosts or cores would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "debdesc"
# bench/train.py's configuration: the default the search must match or beat
DEFAULT_CONFIG = {
    "learning_rate": 1e-4,
    "warmup_ratio": 0.1,
    "batch_size": 32,
    "scale": 20.0,
    "hard_negatives": 1,
    "negative_margin": 0.05,
    "max_seq_length": 64,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "bench-select")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "select.json")
    parser.add_argument("--pool", type=int, default=600, help="training queries searched on")
    parser.add_argument("--pool-corpus", type=int, default=2000)
    parser.add_argument("--test-queries", type=int, default=200)
    parser.add_argument("--test-corpus", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--validation-queries", type=int, default=50)
    parser.add_argument("--validation-corpus", type=int, default=250)
    parser.add_argument("--parallel-trials", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-parallel", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a study to run trials of
    parser.add_argument("--worker-trials", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def search_space(steps: int) -> Any:
    from training.selection.space import SearchSpace

    return SearchSpace.from_mapping(
        {
            "learning_rate": {"low": 2e-5, "high": 4e-4, "log": True},
            "warmup_ratio": {"low": 0.0, "high": 0.3},
            "batch_size": {"choices": [16, 32]},
            "max_steps": {"value": steps},
            "scale": {"low": 10.0, "high": 50.0},
            "hard_negatives": {"choices": [0, 1, 2]},
            "negative_margin": {"low": 0.0, "high": 0.1, "step": 0.05},
            "max_seq_length": {"choices": [32, 64]},
        },
        source="bench/selection.py",
    )


def parallel_space(steps: int) -> Any:
    """Only parameters that leave a trial's cost alone vary: the ratio measures sharing."""
    from training.selection.space import SearchSpace

    return SearchSpace.from_mapping(
        {
            "learning_rate": {"low": 2e-5, "high": 4e-4, "log": True},
            "warmup_ratio": {"low": 0.0, "high": 0.3},
            "batch_size": {"value": 16},
            "max_steps": {"value": steps},
            "scale": {"low": 10.0, "high": 50.0},
            "hard_negatives": {"value": 0},
            "max_seq_length": {"value": 32},
        },
        source="bench/selection.py (parallel)",
    )


def load_sets(args: argparse.Namespace) -> tuple[Any, Any]:
    from training.blend import sample_set
    from training.data import load_beir

    train, _ = load_beir(args.data, "train").deduplicated()
    pool = sample_set(train, queries=args.pool, corpus=args.pool_corpus, seed=args.seed)
    return pool, None


def load_test(args: argparse.Namespace) -> Any:
    from training.blend import sample_set
    from training.data import load_beir

    test = load_beir(args.data, "test")
    return sample_set(test, queries=args.test_queries, corpus=args.test_corpus, seed=args.seed)


def base_config(args: argparse.Namespace, output: Path) -> Any:
    from training.config import TrainConfig, default_base_model

    return TrainConfig(
        output_dir=output,
        base_model=default_base_model(),
        max_steps=args.steps,
        evaluations=1,
        early_stopping_patience=None,
        max_validation_queries=args.validation_queries,
        validation_corpus_size=args.validation_corpus,
        seed=args.seed,
        overwrite=True,
        save_total_limit=1,
        logging_steps=5,
        **{k: v for k, v in DEFAULT_CONFIG.items() if k != "negative_margin"},
    )


def mining(url: str) -> Any:
    from semdb.config import semdb_home
    from training.fine_tune import MiningOptions

    return MiningOptions(
        margin=DEFAULT_CONFIG["negative_margin"],
        cache_dir=semdb_home() / "cache" / "vectors",
        url=url,
    )


def drop_study(name: str) -> None:
    import optuna

    from training.selection.study import open_storage

    try:
        optuna.delete_study(study_name=name, storage=open_storage())
    except KeyError:
        pass


def worker(args: argparse.Namespace, url: str) -> None:
    """One process of a parallel study: trials only (no retraining)."""
    from training.selection.search import SelectionOptions, select_model

    pool, _ = load_sets(args)
    output = args.output / args.worker
    options = SelectionOptions(
        trials=args.worker_trials,
        study=args.worker,
        space=parallel_space(args.steps),
        folds=2,
        url=url,
        heartbeat=10,
    )
    result = select_model(
        pool, None, base_config(args, output), options, mining=mining(url), retrain=False
    )
    print(json.dumps({"ran": result.trials_run_here, "seconds": round(result.seconds, 1)}))


def run_parallel(args: argparse.Namespace, processes: int) -> dict[str, Any]:
    name = f"bench-select-parallel-{processes}"
    drop_study(name)
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--worker-trials",
        str(args.parallel_trials),
        "--steps",
        str(args.steps),
        "--pool",
        str(args.pool),
        "--pool-corpus",
        str(args.pool_corpus),
        "--validation-queries",
        str(args.validation_queries),
        "--validation-corpus",
        str(args.validation_corpus),
        "--output",
        str(args.output),
    ]
    started = time.perf_counter()
    launched = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)
    ]
    outputs = [p.communicate()[0] for p in launched]
    wall = time.perf_counter() - started
    if any(p.returncode for p in launched):
        raise SystemExit(f"a worker of {name} failed")
    ran = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    return {
        "processes": processes,
        "trials": args.parallel_trials,
        "wall_seconds": round(wall, 1),
        "per_process": ran,
    }


def test_model(
    label: str,
    values: dict[str, Any],
    args: argparse.Namespace,
    pool: Any,
    test: Any,
    negatives: Any,
    url: str,
) -> dict[str, Any]:
    from training.selection.objective import configure
    from training.selection.search import score_test
    from training.trainer import train

    output = args.output / label
    config = configure(base_config(args, output), values, output)
    data = negatives.get(values["hard_negatives"], values.get("negative_margin", 0.05))
    started = time.perf_counter()
    result = train(config, data, None)
    trained = time.perf_counter() - started
    scores = score_test(result.model_dir, test, url)
    return {
        "config": values,
        "steps": result.steps,
        "train_seconds": round(trained, 1),
        "test": scores["metrics"],
    }


def main() -> None:
    args = parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from bench.common import engine

    made = engine()  # SEMDB_HOME under bench/.cache unless SEMDB_DATABASE_URL; pgvector ready
    from semdb.db import libpq_uri

    url = libpq_uri(made.url)
    made.dispose()
    if args.worker:
        worker(args, url)
        return
    logging.getLogger("training").setLevel(logging.INFO)
    from rich.console import Console

    from training.selection.objective import NegativePool
    from training.selection.report import PLOT_FILE, summary_lines, trials_table
    from training.selection.search import SelectionOptions, select_model

    console = Console(width=170)
    load_before = os.getloadavg()
    started = time.perf_counter()
    pool, _ = load_sets(args)
    console.print(f"pool: {len(pool.query_ids)} queries, {len(pool.corpus)} documents")
    shutil.rmtree(args.output / "search", ignore_errors=True)
    drop_study("bench-select")
    options = SelectionOptions(
        trials=args.trials,
        study="bench-select",
        space=search_space(args.steps),
        folds=args.folds,
        url=url,
        heartbeat=10,
    )
    search_started = time.perf_counter()
    selection = select_model(
        pool,
        None,
        base_config(args, args.output / "search"),
        options,
        mining=mining(url),
        retrain=False,
    )
    search_seconds = time.perf_counter() - search_started

    import optuna

    from training.selection.report import build_report, write_report
    from training.selection.study import open_storage

    study = optuna.load_study(study_name="bench-select", storage=open_storage(url))
    chosen = study.best_trial
    default_trial = study.trials[0]  # queued with the default configuration
    test = load_test(args)  # only now
    negatives = NegativePool(pool, base_config(args, args.output).base_model, mining(url), 2)
    chosen_values = dict(chosen.user_attrs["config"])
    default_values = {**DEFAULT_CONFIG, "max_steps": args.steps}
    tested = {
        "default": test_model("default", default_values, args, pool, test, negatives, url),
        "chosen": test_model("chosen", chosen_values, args, pool, test, negatives, url),
    }
    report = build_report(
        study,
        chosen=chosen.number,
        folds=args.folds,
        space=options.space,
        final={"note": "retrained by bench/selection.py"},
        test={
            "metrics": tested["chosen"]["test"],
            "queries": len(test.query_ids),
            "documents": len(test.corpus),
            "encoder": "torch",
            "search": "pgvector exact",
        },
        test_source="debdesc qrels/test.tsv sample",
        seconds=search_seconds,
    )
    write_report(report, args.output / "search")
    console.print(trials_table(report))
    for line in summary_lines(report):
        console.print(line)

    parallel = []
    if not args.skip_parallel:
        for processes in (1, 2):
            parallel.append(run_parallel(args, processes))
            console.print(parallel[-1])
    ratio = None
    if len(parallel) >= 2:
        ratio = round(parallel[0]["wall_seconds"] / parallel[1]["wall_seconds"], 2)

    chosen_test = tested["chosen"]["test"]["ndcg@10"]
    default_test = tested["default"]["test"]["ndcg@10"]
    results = {
        "benchmark": "select",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "data": str(args.data),
        "pool": {"queries": len(pool.query_ids), "documents": len(pool.corpus)},
        "test": {"queries": len(test.query_ids), "documents": len(test.corpus)},
        "search": {
            "trials": args.trials,
            "folds": args.folds,
            "steps_per_run": args.steps,
            "wall_seconds": round(search_seconds, 1),
            "trial_states": report["trial_states"],
            "chosen": report["chosen"],
            "default_trial": {
                "number": default_trial.number,
                "mean": default_trial.value,
                "std": default_trial.user_attrs.get("std"),
                "state": default_trial.state.name.lower(),
            },
            "importance": report["importance"],
            "trials_run_here": selection.trials_run_here,
        },
        "test_ndcg@10": {
            "default": default_test,
            "chosen": chosen_test,
            "change_points": round(100 * (chosen_test - default_test), 2),
            "chosen_fold_std_points": None
            if report["chosen"]["validation_ndcg@10"]["std"] is None
            else round(100 * report["chosen"]["validation_ndcg@10"]["std"], 2),
        },
        "tested": tested,
        "parallel": {"runs": parallel, "one_over_two_wall_ratio": ratio},
        "machine": {
            "cpus": os.cpu_count(),
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    shutil.copy(args.output / "search" / PLOT_FILE, args.json.with_suffix(".png"))
    from bench.common import print_table

    print_table(
        "model selection on debdesc (test nDCG@10, sampled test set)",
        ["what", "value"],
        [
            ("default (bench/train.py config)", default_test),
            ("chosen", chosen_test),
            ("change, points", results["test_ndcg@10"]["change_points"]),
            ("chosen fold std, points", results["test_ndcg@10"]["chosen_fold_std_points"]),
            ("search wall s", round(search_seconds)),
            ("1 process / 2 processes wall", ratio),
        ],
    )
    console.print(f"written: {args.json}")


if __name__ == "__main__":
    main()
