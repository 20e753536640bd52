"""Forgetting benchmark: fine-tune on one domain, measure another, blend to keep both.

    OMP_NUM_THREADS=1 python bench/forgetting.py   # the run in bench/results/forgetting.json
    python bench/forgetting.py --max-steps 30 --test-queries 100 --test-corpus 400  # a look

(On a shared 2-core machine one torch thread trained ~5x faster than two: 4-6 s a step
against 20-30 s, the threads spinning against other processes.)

1. **In-domain data**: debdesc (../shared/data/debdesc, Debian package descriptions; the query
   is a package's one-line summary, the document its long description). Training reads
   ``qrels/train.tsv`` only; ``qrels/test.tsv`` is read after training.
2. **General data** (another domain, built here from what every Python installation has):
   the standard library's docstrings (:func:`semdb.quickstart.stdlib_docs.stdlib_docs`). For
   every documented module, class, function and method whose docstring has a summary
   paragraph (4 words or more) and a body after it (20 words or more), the **query is the
   summary** (the docstring's first paragraph, e.g. "Return a list of source lines and
   starting line number for an object.") and **its document is the rest of the docstring**,
   titled with the qualified name (``inspect.getsourcelines``): the summary itself is not in
   the document, so the query must be matched to what the body says. Summaries that occur
   twice (inherited docstrings) are dropped. The 1,209 pairs (Python 3.11) are split,
   seeded, into ``qrels/dev.tsv`` (300 queries: they choose the blend) and
   ``qrels/test.tsv`` (909: they only report). Written to ``--general-dir`` (default
   runs/stdlib-general).
3. ``semdb train``'s path (:func:`training.fine_tune.fine_tune` with ``BlendOptions``):
   all-MiniLM-L6-v2, MultipleNegativesRankingLoss with in-batch negatives (no mined
   negatives: mining encodes 25k documents), then the blend curve a = 0, 0.1, ..., 1 on the
   in-domain validation queries and the general dev queries, and the rule's choice
   (:mod:`training.blend`, bound 1 point).
4. The base (a = 0), the fine-tuned model (a = 1) and the chosen blend are scored on debdesc
   test and on the general test queries by semdb's evaluator (PyTorch encoder, exact top 100
   in memory). On a 2-core machine both are scored on seeded samples: ``--test-queries``
   queries against their own documents and random others, ``--test-corpus`` in all (and
   ``--general-test-queries``, ``--general-test-corpus``); texts cut at 128 tokens.
   ``--test-curve`` scores every a on the test sets too.

Targets (issue 23): the chosen blend keeps at least 80% of the fine-tuned model's in-domain
nDCG@10 gain on debdesc test and loses at most 1 point on the general test set against the base.
Results: bench/results/forgetting.json and forgetting.png (validation curve), and
forgetting-test.png with ``--test-curve``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
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

from training.data import RetrievalSet, load_beir  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "debdesc"
console = Console(width=140)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--general-dir", type=Path, default=ROOT / "runs" / "stdlib-general")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "bench-forgetting")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "forgetting.json")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--validation-queries", type=int, default=150)
    parser.add_argument("--validation-corpus", type=int, default=400)
    parser.add_argument("--general-dev", type=int, default=300, help="general queries in dev")
    parser.add_argument("--general-queries", type=int, default=200, help="dev queries scored")
    parser.add_argument("--general-corpus", type=int, default=400, help="docs for the curve")
    parser.add_argument("--curve-max-tokens", type=int, default=128)
    parser.add_argument("--bound", type=float, default=1.0)
    parser.add_argument("--test-queries", type=int, default=400)
    parser.add_argument("--test-corpus", type=int, default=1200)
    parser.add_argument("--general-test-queries", type=int, default=400)
    parser.add_argument("--general-test-corpus", type=int, default=800)
    parser.add_argument("--test-curve", action="store_true", help="score every a on test")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-training", action="store_true", help="reuse --output's run")
    return parser.parse_args()


# -- the general set ---------------------------------------------------------------------------


def build_stdlib_set(folder: Path, *, dev_queries: int, seed: int) -> dict[str, Any]:
    """Write the standard library's docstrings as a BEIR folder (module docstring, step 2)."""
    from collections import Counter

    from semdb.quickstart.stdlib_docs import stdlib_docs

    entries = []
    for entry in stdlib_docs():
        parts = entry.doc.split("\n\n", 1)
        if len(parts) < 2:
            continue
        body = " ".join(parts[1].split())
        summary = " ".join(entry.summary.split())
        if len(summary.split()) < 4 or len(body.split()) < 20:
            continue
        entries.append((entry.qualname, summary, body))
    counts = Counter(summary.casefold() for _, summary, _ in entries)
    entries = [e for e in entries if counts[e[1].casefold()] == 1]
    ids = [f"d{index}" for index in range(len(entries))]
    order = list(ids)
    random.Random(seed).shuffle(order)
    dev = set(order[:dev_queries])
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w") as corpus, (folder / "queries.jsonl").open("w") as q:
        for document_id, (qualname, summary, body) in zip(ids, entries, strict=True):
            corpus.write(json.dumps({"_id": document_id, "title": qualname, "text": body}) + "\n")
            q.write(json.dumps({"_id": f"q{document_id[1:]}", "text": summary}) + "\n")
    for split, chosen in (
        ("dev", [i for i in ids if i in dev]),
        ("test", [i for i in ids if i not in dev]),
    ):
        with (folder / "qrels" / f"{split}.tsv").open("w") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for document_id in chosen:
                handle.write(f"q{document_id[1:]}\t{document_id}\t1\n")
    python = platform.python_version()
    info = {
        "source": f"Python {python} standard library docstrings",
        "documents": len(ids),
        "dev_queries": len(dev),
        "test_queries": len(ids) - len(dev),
    }
    (folder / "README.json").write_text(json.dumps(info, indent=2))
    return info


# -- scoring -----------------------------------------------------------------------------------


def sample_test(data: RetrievalSet, queries: int, corpus: int, seed: int) -> RetrievalSet:
    from training.blend import sample_set

    return sample_set(data, queries=queries, corpus=corpus, seed=seed)


def score_alphas(
    blender: Any, alphas: list[float], sets: dict[str, RetrievalSet], max_tokens: int | None
) -> dict[float, dict[str, dict[str, float]]]:
    """Semdb's evaluator (exact top 100, in memory) for each blend on each set."""
    from training.encoders import SentenceTransformerEncoder
    from training.evaluate import evaluate

    results: dict[float, dict[str, dict[str, float]]] = {}
    for alpha in alphas:
        model = blender.set_alpha(alpha)
        encoder = SentenceTransformerEncoder(
            model, query_max_tokens=max_tokens, document_max_tokens=max_tokens
        )
        results[alpha] = {}
        for name, data in sets.items():
            started = time.perf_counter()
            evaluation = evaluate(encoder, data, model=f"a={alpha}", search="numpy")
            results[alpha][name] = evaluation.metrics
            console.print(
                f"  a = {alpha:.1f} {name}: nDCG@10 {evaluation.metrics['ndcg@10']:.4f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
    return results


def main() -> None:
    args = parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("training").setLevel(logging.INFO)
    import torch

    from training.blend import (
        GENERAL,
        IN_DOMAIN,
        Blender,
        BlendReport,
        CurvePoint,
        curve_table,
        plot_curve,
    )
    from training.config import TrainConfig, default_base_model
    from training.fine_tune import BlendOptions, fine_tune

    started = time.perf_counter()
    load_before = os.getloadavg()
    if not (args.general_dir / "qrels" / "dev.tsv").is_file():
        info = build_stdlib_set(args.general_dir, dev_queries=args.general_dev, seed=args.seed)
    else:
        info = json.loads((args.general_dir / "README.json").read_text())
    console.print(f"general set: {info}")
    general_dev = load_beir(args.general_dir, "dev")

    base_model = default_base_model()
    config = TrainConfig(
        output_dir=args.output,
        base_model=base_model,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_seq_length=args.max_seq_length,
        hard_negatives=0,
        seed=args.seed,
        evaluations=1,
        early_stopping_patience=None,
        max_validation_queries=args.validation_queries,
        validation_corpus_size=args.validation_corpus,
        overwrite=True,
    )
    options = BlendOptions(
        general={"stdlib/dev": general_dev},
        bound=args.bound,
        queries=args.general_queries,
        corpus=args.general_corpus,
        max_tokens=args.curve_max_tokens,
    )
    train_result: dict[str, Any] = {}
    if not args.skip_training:
        train_started = time.perf_counter()
        result = fine_tune(load_beir(args.data, "train"), config, blend=options)
        train_result = {
            **result.to_json(),
            "wall_seconds_with_blend": round(time.perf_counter() - train_started, 1),
        }
    report = BlendReport.from_json(json.loads((args.output / "blend.json").read_text()))
    console.print(curve_table(report, title="validation curve: nDCG@10 (change over the base)"))
    chosen = report.chosen

    # Only now is the test split read.
    test_sets = {
        "debdesc/test": sample_test(
            load_beir(args.data, "test"), args.test_queries, args.test_corpus, args.seed
        ),
        "stdlib/test": load_beir(args.general_dir, "test"),
    }
    if args.general_test_queries:
        test_sets["stdlib/test"] = sample_test(
            test_sets["stdlib/test"], args.general_test_queries, args.general_test_corpus, args.seed
        )
    alphas = [0.0, 1.0] if chosen in (0.0, 1.0) else [0.0, chosen, 1.0]
    if args.test_curve:
        alphas = [round(step / 10, 1) for step in range(11)]
    blender = Blender(base_model, args.output / "model")
    test_scores = score_alphas(blender, alphas, test_sets, args.curve_max_tokens)

    base, tuned, blend = test_scores[0.0], test_scores[1.0], test_scores[chosen]
    gain_tuned = tuned["debdesc/test"]["ndcg@10"] - base["debdesc/test"]["ndcg@10"]
    gain_blend = blend["debdesc/test"]["ndcg@10"] - base["debdesc/test"]["ndcg@10"]
    kept = gain_blend / gain_tuned if gain_tuned > 0 else None
    general_change = 100 * (blend["stdlib/test"]["ndcg@10"] - base["stdlib/test"]["ndcg@10"])
    targets = {
        "in_domain_gain_points_fine_tuned": round(100 * gain_tuned, 2),
        "in_domain_gain_points_blend": round(100 * gain_blend, 2),
        "share_of_gain_kept": None if kept is None else round(kept, 3),
        "general_change_points_fine_tuned": round(
            100 * (tuned["stdlib/test"]["ndcg@10"] - base["stdlib/test"]["ndcg@10"]), 2
        ),
        "general_change_points_blend": round(general_change, 2),
        "keeps_80_percent": kept is not None and kept >= 0.8,
        "loses_at_most_1_point": general_change >= -1.0,
    }
    test_report = BlendReport(
        bound=report.bound,
        chosen=chosen,
        sets=[
            {"name": "debdesc/test", "role": IN_DOMAIN, "queries": 0, "documents": 0},
            {"name": "stdlib/test", "role": GENERAL, "queries": 0, "documents": 0},
        ],
        curve=[CurvePoint(a, test_scores[a]) for a in sorted(test_scores)],
    )
    for described in test_report.sets:
        data = test_sets[described["name"]]
        described.update(queries=len(data.query_ids), documents=len(data.corpus))
    console.print(curve_table(test_report, title="test: nDCG@10 (change over the base)"))
    console.print(targets)

    results_dir = args.json.parent
    results_dir.mkdir(parents=True, exist_ok=True)
    plot_curve(
        report,
        results_dir / "forgetting.png",
        title="debdesc fine-tune blended with all-MiniLM-L6-v2 (validation)",
    )
    if args.test_curve:
        plot_curve(
            test_report,
            results_dir / "forgetting-test.png",
            title="debdesc fine-tune blended with all-MiniLM-L6-v2 (test)",
        )
    results = {
        "benchmark": "forgetting",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "data": str(args.data),
        "general_set": info,
        "config": config.to_json(),
        "training": train_result,
        "validation_curve": report.to_json(),
        "test": test_report.to_json(),
        "targets": targets,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.json.write_text(json.dumps(results, indent=2))
    console.print(f"written: {args.json}")


if __name__ == "__main__":
    main()
