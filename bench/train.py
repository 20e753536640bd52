"""Fine-tuning benchmark: does training on the user's data lift retrieval, measured as users see it?

    python bench/train.py                         # debdesc, 30-minute budget, CPU
    python bench/train.py --time-budget 5 --test-queries 300     # a quick look
    python bench/train.py --epochs 1 --time-budget 0             # a full epoch (GPU)

1. Train all-MiniLM-L6-v2 (the packaged copy) on ``qrels/train.tsv`` of a BEIR folder
   (default ../shared/data/debdesc): deduplicated, seeded validation split, hard negatives
   mined with the base model through pgvector, MultipleNegativesRankingLoss, a time budget.
   ``qrels/test.tsv`` is never read before training ends.
2. Score the base model and the fine-tuned one on ``qrels/test.tsv`` against the whole
   corpus: corpus vectors copied into pgvector, each query's top 100 asked for by SQL (exact).
   ``--eval-backend onnx`` (default) exports both models to semdb bundles and embeds with
   semdb's ONNX Runtime embedder, the production path; ``torch`` embeds with
   sentence-transformers (for a machine without the exporter; the table says which).
3. Print a table and write JSON (``bench/results/train.json``): metrics, the lift in points,
   wall times, steps, samples/s and the command line.

The base model's corpus vectors are cached under SEMDB_HOME/cache/vectors (one encoding of
27k documents takes 5-20 minutes on 2 CPU cores), so a second run starts training at once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from training.data import RetrievalSet, load_beir  # noqa: E402
from training.evaluate import Evaluation, comparison_table, evaluate  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "debdesc"
TARGET_NDCG = 0.7253  # base 0.6953 + 3 points; BM25 0.7081 (README of debdesc)
console = Console(width=130)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "bench-train")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "train.json")
    parser.add_argument("--time-budget", type=float, default=30.0, help="minutes (0: none)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mini-batch-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--hard-negatives", type=int, default=1)
    parser.add_argument("--negative-margin", type=float, default=0.05)
    parser.add_argument("--validation-queries", type=int, default=300)
    parser.add_argument("--validation-corpus", type=int, default=1000)
    parser.add_argument("--evaluations", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-backend", choices=["onnx", "torch"], default="onnx")
    parser.add_argument(
        "--precision",
        action="append",
        choices=["fp32", "fp16", "int8"],
        help="ONNX graphs to score (repeat) [default: fp32 and int8]",
    )
    parser.add_argument(
        "--test-queries", type=int, default=None, help="score a seeded sample of test queries"
    )
    parser.add_argument("--skip-training", action="store_true", help="score --output's model")
    return parser.parse_args()


def cache_dir() -> Path:
    from semdb.config import semdb_home

    return semdb_home() / "cache" / "vectors"


def sample_queries(data: RetrievalSet, count: int | None, seed: int) -> RetrievalSet:
    if count is None or count >= len(data.query_ids):
        return data
    import random

    chosen = sorted(data.query_ids)
    random.Random(seed).shuffle(chosen)
    keep = set(chosen[:count])
    return data.subset([q for q in data.query_ids if q in keep])


def base_encoders(args: argparse.Namespace, base_model: str) -> dict[str, Any]:
    """The base model as it is scored (and mines): one encoder per precision, or torch."""
    from training.encoders import SentenceTransformerEncoder

    if args.eval_backend == "torch":
        return {"torch": SentenceTransformerEncoder.load(base_model, progress=True)}
    from semdb.bundles.store import DEFAULT_MODEL, bundle_dir

    # The store's all-MiniLM-L6-v2 (what `semdb model import` writes), exported if missing.
    bundle = export_once(Path(base_model), bundle_dir(DEFAULT_MODEL, "1"), DEFAULT_MODEL)
    return onnx_encoders(bundle, args)


def export_once(model_dir: Path, target: Path, name: str) -> Path:
    """``model_dir`` as a semdb bundle at ``target`` (exported once, reused after)."""
    from training.export import export_bundle

    if (target / "manifest.json").is_file():
        return target
    started = time.perf_counter()
    export_bundle(
        model_dir,
        target,
        name=name,
        version="1",
        precisions=("fp32", "int8"),
        progress=lambda message: console.print(f"  [dim]{message}[/dim]"),
    )
    console.print(f"exported {name} in {time.perf_counter() - started:.0f} s: {target}")
    return target


def onnx_encoders(bundle: Path, args: argparse.Namespace) -> dict[str, Any]:
    from semdb.embed import Embedder

    return {p: Embedder.load(str(bundle), precision=p) for p in args.precision or ["fp32", "int8"]}


def score(
    label: str, encoders: dict[str, Any], test: RetrievalSet, url: str | None
) -> list[Evaluation]:
    results = []
    for variant, encoder in encoders.items():
        name = f"{label} ({variant})"
        console.print(f"scoring {name} on {len(test.query_ids)} queries, {len(test.corpus)} docs")
        results.append(
            evaluate(encoder, test, model=name, url=url, cache_dir=cache_dir(), progress=True)
        )
    return results


def main() -> None:
    args = parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("training").setLevel(logging.INFO)
    import torch

    from semdb.db import libpq_uri, resolve_url
    from training.config import TrainConfig, default_base_model
    from training.fine_tune import MiningOptions, fine_tune

    started = time.perf_counter()
    load_before = os.getloadavg()
    url = libpq_uri(resolve_url())
    base_model = default_base_model()
    config = TrainConfig(
        output_dir=args.output,
        base_model=base_model,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        mini_batch_size=args.mini_batch_size,
        learning_rate=args.learning_rate,
        warmup_ratio=args.warmup_ratio,
        max_seq_length=args.max_seq_length,
        hard_negatives=args.hard_negatives,
        seed=args.seed,
        evaluations=args.evaluations,
        early_stopping_patience=None,
        max_validation_queries=args.validation_queries,
        validation_corpus_size=args.validation_corpus,
        time_budget_minutes=args.time_budget or None,
        overwrite=True,
    )
    base = base_encoders(args, base_model)
    mining_encoder = base.get("torch") or base.get("fp32") or next(iter(base.values()))

    train_result: dict[str, Any] = {}
    if not args.skip_training:
        train_started = time.perf_counter()
        result = fine_tune(
            load_beir(args.data, "train"),
            config,
            mining=MiningOptions(
                margin=args.negative_margin, encoder=mining_encoder, cache_dir=cache_dir(), url=url
            ),
        )
        train_result = {
            **result.to_json(),
            "wall_seconds_with_mining": round(time.perf_counter() - train_started, 1),
        }
        negatives = args.output / "negatives.json"
        if negatives.is_file():
            train_result["mining"] = json.loads(negatives.read_text())["report"]

    # Only now is the test split read.
    test = sample_queries(load_beir(args.data, "test"), args.test_queries, args.seed)
    model_dir = args.output / "model"
    if args.eval_backend == "torch":
        from training.encoders import SentenceTransformerEncoder

        tuned = {"torch": SentenceTransformerEncoder.load(model_dir, progress=True)}
    else:
        bundle = args.output / "bundle"
        if bundle.exists() and not args.skip_training:
            import shutil

            shutil.rmtree(bundle)
        tuned = onnx_encoders(export_once(model_dir, bundle, "fine-tuned"), args)
    evaluations: list[Evaluation] = []
    references: list[int | None] = []
    for variant in base:  # each fine-tuned row right under the base row it is compared with
        references += [None, len(evaluations)]
        evaluations += score("base", {variant: base[variant]}, test, url)
        evaluations += score("fine-tuned", {variant: tuned[variant]}, test, url)

    title = f"{args.data.name}: test qrels (change over the base in points)"
    console.print(comparison_table(evaluations, title=title, references=references))
    lifts = summarise(evaluations)
    report_table(train_result, lifts)
    results = {
        "benchmark": "train",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "data": str(args.data),
        "test_queries": len(test.query_ids),
        "corpus": len(test.corpus),
        "eval_path": "onnx embedder + pgvector exact SQL"
        if args.eval_backend == "onnx"
        else "torch (sentence-transformers) + pgvector exact SQL",
        "config": config.to_json(),
        "training": train_result,
        "evaluations": [e.to_json() for e in evaluations],
        "lift_points": lifts,
        "target_ndcg@10": TARGET_NDCG,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    console.print(f"written: {args.json}")


def summarise(evaluations: list[Evaluation]) -> dict[str, dict[str, float]]:
    """The fine-tuned model's change over the base, per variant, in points (x 100)."""
    by_variant: dict[str, dict[str, Evaluation]] = {}
    for evaluation in evaluations:
        label, _, variant = evaluation.model.partition(" (")
        by_variant.setdefault(variant.rstrip(")"), {})[label] = evaluation
    lifts = {}
    for variant, pair in by_variant.items():
        if "base" in pair and "fine-tuned" in pair:
            lifts[variant] = {
                name: round(100 * (pair["fine-tuned"].metrics[name] - value), 2)
                for name, value in pair["base"].metrics.items()
            }
    return lifts


def report_table(train_result: dict[str, Any], lifts: dict[str, dict[str, float]]) -> None:
    table = Table(title="training")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in ("steps", "seconds", "samples_per_second", "train_pairs", "world_size"):
        if key in train_result:
            table.add_row(key, str(train_result[key]))
    if train_result.get("validation_start") is not None:
        table.add_row(
            "validation nDCG@10",
            f"{train_result['validation_start']:.4f} -> {train_result['best_metric']:.4f}",
        )
    for variant, lift in lifts.items():
        table.add_row(f"lift nDCG@10 ({variant})", f"{lift['ndcg@10']:+.2f} points")
    console.print(table)


if __name__ == "__main__":
    main()
