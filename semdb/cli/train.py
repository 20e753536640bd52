"""``semdb train``, ``semdb eval``, ``semdb export``: fine-tune on your data, measure, ship.

The loop::

    semdb train "SELECT question, answer FROM faq" -o runs/faq      # fine-tune (torch)
    semdb export runs/faq --name faq-minilm                          # ONNX bundle, registered
    semdb eval faq-minilm ./my-beir-folder --split test --record     # scores beside the base

Thin wrappers over :mod:`training` (which needs the ``train`` extra: torch, transformers,
sentence-transformers, optimum). Nothing here imports torch until a command runs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from semdb.errors import SemdbError

TRAIN_EXTRA_FIX = "install the training extra: pip install 'semdb[train]'"
DEFAULT_BASELINE = "all-MiniLM-L6-v2"


def require_training_stack() -> None:
    """Import torch and sentence-transformers now, or fail with the fix."""
    import importlib

    for module in ("torch", "transformers", "sentence_transformers", "datasets"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SemdbError(
                f"this command needs the training extra ({module} is not installed)",
                fix=TRAIN_EXTRA_FIX,
            ) from exc


def _quiet_libraries() -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("training").setLevel(logging.INFO)


def _vector_cache() -> Path:
    from semdb.config import semdb_home

    return semdb_home() / "cache" / "vectors"


def general_options(command: Any) -> Any:
    """--general DIR (repeat), --general-split, --forgetting-bound: shared by train and eval."""
    command = click.option(
        "--forgetting-bound",
        type=float,
        default=1.0,
        show_default=True,
        help="Points of nDCG@10 a general set may lose against the base model.",
    )(command)
    command = click.option(
        "--general-split",
        default="test",
        show_default=True,
        help="qrels split of the general sets.",
    )(command)
    return click.option(
        "--general",
        multiple=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="A BEIR folder from another domain, to measure forgetting on (repeat).",
    )(command)


def load_general_sets(folders: tuple[Path, ...], split: str, bound: float) -> dict[str, Any]:
    """name -> RetrievalSet for each general folder; bad input fails here, before any work."""
    from training.blend import check_bound
    from training.data import load_beir

    check_bound(bound)
    sets: dict[str, Any] = {}
    for folder in folders:
        name = f"{folder.name}/{split}"
        if name in sets:
            raise SemdbError(f"two general sets are both named {name}", fix="give each folder once")
        sets[name] = load_beir(folder, split)
    return sets


def selection_options(command: Any) -> Any:
    """--search N, --study, --space, --folds, --test-split, --test-fraction, --heartbeat."""
    options = [
        click.option(
            "--heartbeat",
            type=int,
            default=20,
            show_default=True,
            help="Seconds between a running trial's heartbeats; after 3 missed (the process "
            "died) the trial is marked failed and run again.",
        ),
        click.option(
            "--test-fraction",
            type=float,
            default=0.1,
            show_default=True,
            help="Queries held out for the test score when DATA has no test split.",
        ),
        click.option(
            "--test-split",
            default="test",
            show_default=True,
            help="BEIR qrels split scored once, after the search.",
        ),
        click.option(
            "--folds",
            type=int,
            help="K-fold cross-validation by query: each trial scored by the mean validation "
            "nDCG@10 over K folds [default: one --validation-fraction split].",
        ),
        click.option(
            "--space",
            type=click.Path(dir_okay=False, path_type=Path),
            help="TOML file replacing ranges of the default search space.",
        ),
        click.option(
            "--study",
            help="Name of the study in the database: started twice, the processes share it; "
            "started again, it continues [default: the run folder's name].",
        ),
        click.option(
            "--search",
            type=int,
            metavar="N",
            help="Model selection: try N configurations (Optuna), retrain the best on all "
            "training queries, score it once on the test queries.",
        ),
    ]
    for option in options:
        command = option(command)
    return command


# --- semdb train --------------------------------------------------------------------------


@click.command("train")
@click.argument("data")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/fine-tuned"),
    show_default=True,
    help="Run folder: checkpoints/, model/, metrics.jsonl, training.json.",
)
@click.option("--split", default="train", show_default=True, help="BEIR qrels split to train on.")
@click.option(
    "--base-model", help="Model folder to start from [default: packaged all-MiniLM-L6-v2]."
)
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--max-steps", type=int, help="Stop after this many steps (overrides --epochs).")
@click.option(
    "--batch-size",
    type=int,
    default=32,
    show_default=True,
    help="Pairs per step and device: each query's in-batch negatives are the others' documents.",
)
@click.option(
    "--mini-batch-size",
    type=int,
    help="Below --batch-size: the cached (GradCache) loss, large batches in small memory.",
)
@click.option("--learning-rate", "--lr", type=float, default=5e-5, show_default=True)
@click.option("--warmup-ratio", type=float, default=0.1, show_default=True)
@click.option(
    "--max-seq-length",
    type=int,
    default=128,
    show_default=True,
    help="Tokens kept per text while training (the exported model keeps its own maximum).",
)
@click.option(
    "--hard-negatives",
    type=int,
    default=0,
    show_default=True,
    help="Negatives per query mined with the base model through pgvector.",
)
@click.option(
    "--negative-margin",
    type=float,
    default=0.05,
    show_default=True,
    help="Skip neighbours scoring above (1 - margin) x the positive's score (likely positives).",
)
@click.option(
    "--negative-depth",
    type=int,
    default=30,
    show_default=True,
    help="Nearest neighbours looked at per query when mining.",
)
@click.option("--validation-fraction", type=float, default=0.05, show_default=True)
@click.option("--validation-queries", type=int, default=500, show_default=True, help="At most.")
@click.option("--eval-steps", type=int, help="Validate (and checkpoint) every N steps [5 times].")
@click.option(
    "--patience",
    type=int,
    default=3,
    show_default=True,
    help="Stop after this many validations without a better nDCG@10 (0: never).",
)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option(
    "--amp",
    type=click.Choice(["auto", "off", "fp16", "bf16"]),
    default="auto",
    show_default=True,
    help="Mixed precision on CUDA (bf16 where supported); never on the CPU.",
)
@click.option("--time-budget", type=float, help="Stop after this many minutes (and save).")
@click.option(
    "--resume", is_flag=True, help="Continue the run in --output from its last checkpoint."
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier run in --output.")
@general_options
@click.option(
    "--general-queries",
    type=int,
    default=300,
    show_default=True,
    help="Queries per general set scored for the blend curve (at most; seeded sample).",
)
@click.option(
    "--general-corpus",
    type=int,
    default=1000,
    show_default=True,
    help="Documents per general set for the blend curve: the queries' own and random others.",
)
@selection_options
def train_command(
    data: str,
    output: Path,
    split: str,
    base_model: str | None,
    epochs: float,
    max_steps: int | None,
    batch_size: int,
    mini_batch_size: int | None,
    learning_rate: float,
    warmup_ratio: float,
    max_seq_length: int,
    hard_negatives: int,
    negative_margin: float,
    negative_depth: int,
    validation_fraction: float,
    validation_queries: int,
    eval_steps: int | None,
    patience: int,
    seed: int,
    amp: str,
    time_budget: float | None,
    resume: bool,
    overwrite: bool,
    general: tuple[Path, ...],
    general_split: str,
    forgetting_bound: float,
    general_queries: int,
    general_corpus: int,
    search: int | None,
    study: str | None,
    space: Path | None,
    folds: int | None,
    test_split: str,
    test_fraction: float,
    heartbeat: int,
) -> None:
    """Fine-tune a text encoder on DATA: a BEIR folder, a .jsonl file, or an SQL query.

    \b
    DATA examples:
      ./my-beir-folder                      corpus.jsonl, queries.jsonl, qrels/train.tsv
      pairs.jsonl                           {"query": ..., "positive": ..., "negative": ...}
      "SELECT question, answer FROM faq"    run read-only on the semdb database

    Pairs are deduplicated and split (seeded) into train and validation; training stops
    early when the validation nDCG@10 stops improving. Runs unchanged under torchrun:
    torchrun --nproc_per_node=2 -m semdb train DATA ...

    With --general DIR (BEIR folders from other domains), the run then blends the base and
    fine-tuned weights, (1 - a) * base + a * fine-tuned for a = 0, 0.1, ..., 1, and keeps the
    a with the best validation nDCG@10 among those losing at most --forgetting-bound points
    on every general set: RUN/blended (what semdb export takes), RUN/blend.json, blend.png.

    With --search N, a model selection: N configurations tried (Optuna, in a study kept in
    the database; --study NAME started twice shares the work), --folds K cross-validation,
    the best retrained on all training queries into -o, scored once on the test queries:
    RUN/selection.json, RUN/selection.png.
    """
    _quiet_libraries()
    from training.config import TrainConfig, check_output_dir, default_base_model, world
    from training.data import load_source

    if search is not None:
        if general or resume:
            raise SemdbError(
                "--search does not combine with --general or --resume",
                fix="run the search, then blend or continue its run with a plain semdb train",
            )
    elif any(v is not None for v in (study, space, folds)):
        raise SemdbError(
            "--study, --space and --folds belong to a model selection", fix="add --search N"
        )

    config = TrainConfig(
        output_dir=output,
        base_model=base_model or default_base_model(),
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        mini_batch_size=mini_batch_size,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        max_seq_length=max_seq_length,
        hard_negatives=hard_negatives,
        seed=seed,
        amp=amp,  # type: ignore[arg-type]
        eval_steps=eval_steps,
        early_stopping_patience=patience or None,
        validation_fraction=validation_fraction,
        max_validation_queries=validation_queries,
        time_budget_minutes=time_budget,
        resume=resume,
        overwrite=overwrite,
    )
    if search is not None:
        _select(
            data,
            config,
            split=split,
            trials=search,
            study=study or output.resolve().name,
            space=space,
            folds=folds,
            test_split=test_split,
            test_fraction=test_fraction,
            heartbeat=heartbeat,
            negative_depth=negative_depth,
            negative_margin=negative_margin,
        )
        return
    # Mistakes fail before torch loads: an earlier run in the way, data that cannot be read.
    if not overwrite:
        check_output_dir(config)
    general_sets = load_general_sets(general, general_split, forgetting_bound)
    training_data = load_source(data, split=split)
    if general_sets and validation_fraction <= 0:
        raise SemdbError(
            "--general needs in-domain validation queries to choose the blend",
            fix="give --validation-fraction above 0",
        )
    require_training_stack()
    from training.fine_tune import BlendOptions, MiningOptions, fine_tune

    mining = MiningOptions(depth=negative_depth, margin=negative_margin, cache_dir=_vector_cache())
    blend = None
    if general_sets:
        blend = BlendOptions(
            general=general_sets,
            bound=forgetting_bound,
            queries=general_queries,
            corpus=general_corpus,
        )
    result = fine_tune(training_data, config, mining=mining, blend=blend)
    if world()[0] != 0:
        return
    before, best = result.validation_start, result.best_metric
    click.echo(
        f"trained {result.steps} steps in {result.seconds:.0f} s on {result.train_pairs} pairs"
    )
    if before is not None and best is not None:
        click.echo(
            f"validation nDCG@10 ({result.validation_queries} queries): "
            f"{before:.4f} -> {best:.4f} ({100 * (best - before):+.2f} points)"
        )
    click.echo(f"model: {result.model_dir}")
    click.echo(f"metrics log: {result.metrics_log}")
    if result.blend is not None:
        _report_blend(output)
    click.echo(f"next: semdb export {output} --name NAME, then semdb eval NAME DATA --split test")


def _select(
    data: str,
    config: Any,
    *,
    split: str,
    trials: int,
    study: str,
    space: Path | None,
    folds: int | None,
    test_split: str,
    test_fraction: float,
    heartbeat: int,
    negative_depth: int,
    negative_margin: float,
) -> None:
    """semdb train --search: every input checked before the training stack loads."""
    from training.config import check_output_dir
    from training.selection.search import TRIALS_DIR

    if not config.overwrite and not (config.output_dir / TRIALS_DIR).is_dir():
        check_output_dir(config)  # a plain run is not replaced by a search's by accident
    from training.selection.folds import hold_out_test
    from training.selection.space import SearchSpace

    searched = SearchSpace.load(space) if space else SearchSpace.default()
    pool, test, test_source = hold_out_test(
        data, split=split, test_split=test_split, test_fraction=test_fraction, seed=config.seed
    )
    from training.selection.search import SelectionOptions, plan

    options = SelectionOptions(
        trials=trials, study=study, space=searched, folds=folds, heartbeat=heartbeat
    )
    checked = plan(pool, config, options, negative_margin)  # folds against the queries
    click.echo(
        f"model selection: study {study!r}, {trials} trials, "
        + (f"{folds}-fold cross-validation" if folds else "one validation split")
        + f", {len(pool.query_ids)} search queries, test: {test_source} "
        f"({len(test.query_ids)} queries)"
    )
    del checked
    require_training_stack()
    from rich.console import Console

    from training.fine_tune import MiningOptions
    from training.selection.report import summary_lines, trials_table
    from training.selection.search import select_model

    mining = MiningOptions(depth=negative_depth, margin=negative_margin, cache_dir=_vector_cache())
    result = select_model(pool, test, config, options, mining=mining, test_source=test_source)
    click.echo(f"this process ran {result.trials_run_here} trial(s) in {result.seconds:.0f} s")
    if result.report is None:
        click.echo(
            "another process of this study retrains the chosen configuration (or did already: "
            "see the selection.json of the run folder it names in the study)"
        )
        return
    Console(width=160).print(trials_table(result.report))
    for line in summary_lines(result.report):
        click.echo(line)
    out = config.output_dir
    click.echo(f"model: {out / 'model'}; report: {out / 'selection.json'}, {out / 'selection.png'}")
    click.echo(f"next: semdb export {out} --name NAME")


def _report_blend(output: Path) -> None:
    import json

    from rich.console import Console

    from training.blend import BLEND_FILE, BLENDED_DIR, PLOT_FILE, BlendReport, curve_table

    report = BlendReport.from_json(json.loads((output / BLEND_FILE).read_text()))
    Console(width=140).print(curve_table(report))
    click.echo(f"rule: {report.rule} (bound {report.bound:g} points)")
    if report.chosen < 1.0:
        click.echo(
            f"chosen: a = {report.chosen:.1f}, written to {output / BLENDED_DIR} "
            "(semdb export takes it; --blend 1 exports the fine-tuned model as it is)"
        )
    else:
        click.echo("chosen: a = 1.0, the fine-tuned model as it is (no general set lost too much)")
    click.echo(f"curve: {output / BLEND_FILE}, plot: {output / PLOT_FILE}")


# --- semdb eval ---------------------------------------------------------------------------


@click.command("eval")
@click.argument("model")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="BEIR qrels split to score.")
@click.option(
    "--baseline",
    help="Model scored beside MODEL (a bundle name, folder, or checkpoint folder) "
    f"[default: {DEFAULT_BASELINE} when it is in the model store].",
)
@click.option("--no-baseline", is_flag=True, help="Score MODEL alone.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "onnx", "torch"]),
    default="auto",
    show_default=True,
    help="auto: semdb's ONNX embedder for bundles, PyTorch for checkpoint folders.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8"]),
    help="ONNX graph to run [default: the embedder's choice, as users get it].",
)
@click.option(
    "--search",
    type=click.Choice(["pgvector", "numpy"]),
    default="pgvector",
    show_default=True,
    help="pgvector: exact top-k by SQL in the database; numpy: exact, in memory.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--record", is_flag=True, help="Store the scores in the model registry.")
@general_options
def eval_command(
    model: str,
    data: Path,
    split: str,
    baseline: str | None,
    no_baseline: bool,
    backend: str,
    precision: str | None,
    search: str,
    json_path: Path | None,
    record: bool,
    general: tuple[Path, ...],
    general_split: str,
    forgetting_bound: float,
) -> None:
    """Score MODEL on a BEIR folder's qrels: nDCG@10, MRR@10, Recall@10, Recall@100.

    The corpus and queries are embedded by MODEL, the corpus vectors copied into a pgvector
    table and each query's top 100 asked for by SQL, exact: the path users' queries take.
    With --general DIR (repeat), MODEL and the baseline are also scored on sets from other
    domains, and a summary shows the change per set (what fine-tuning made the model forget).
    """
    import json

    from rich.console import Console

    from training.blend import GENERAL, IN_DOMAIN
    from training.data import load_beir
    from training.evaluate import comparison_table

    _quiet_libraries()
    general_sets = load_general_sets(general, general_split, forgetting_bound)
    sets = [(f"{data.name}/{split}", IN_DOMAIN, data, split, load_beir(data, split))]
    for name, loaded in general_sets.items():
        folder = next(g for g in general if f"{g.name}/{general_split}" == name)
        sets.append((name, GENERAL, folder, general_split, loaded))
    if baseline is None and not no_baseline:
        baseline = _default_baseline()
    models = [model] if no_baseline or baseline is None else [baseline, model]
    encoders = {name: _encoder(name, backend, precision) for name in models}
    console = Console()
    scored: list[tuple[str, str, Path, str, list[Any]]] = []
    for set_name, role, folder, set_split, test in sets:
        evaluations = []
        for name in models:
            click.echo(
                f"scoring {name} on {set_name}: {len(test.query_ids)} queries, "
                f"{len(test.corpus)} documents"
            )
            evaluations.append(_evaluate(encoders[name], test, name, search))
        console.print(comparison_table(evaluations, title=f"{set_name} ({role})"))
        scored.append((set_name, role, folder, set_split, evaluations))
    if len(scored) > 1 and len(models) > 1:
        console.print(per_set_table(scored, forgetting_bound))
    evaluated_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results = {
        "data": str(data),
        "split": split,
        "evaluated_at": evaluated_at,
        "models": [e.to_json() for e in scored[0][4]],
        "sets": [
            {
                "name": set_name,
                "role": role,
                "data": str(folder),
                "split": set_split,
                "models": [e.to_json() for e in evaluations],
            }
            for set_name, role, folder, set_split, evaluations in scored
        ],
    }
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2))
        click.echo(f"written: {json_path}")
    if record:
        _record(model, scored, evaluated_at)


def per_set_table(scored: list[tuple[str, str, Path, str, list[Any]]], bound: float) -> Any:
    """One row per set: the baseline's and the model's nDCG@10 and the change in points."""
    from rich.table import Table

    table = Table(title=f"nDCG@10 per set (a general set may lose at most {bound:g} points)")
    for column in ("set", "role", "baseline", "model", "change"):
        table.add_column(column, justify="left" if column in ("set", "role") else "right")
    table.add_column("")
    for set_name, role, _, _, evaluations in scored:
        before, after = evaluations[0].metrics["ndcg@10"], evaluations[-1].metrics["ndcg@10"]
        change = 100 * (after - before)
        flag = "forgot: above the bound" if role == "general" and -change > bound else ""
        table.add_row(set_name, role, f"{before:.4f}", f"{after:.4f}", f"{change:+.2f}", flag)
    return table


def _default_baseline() -> str | None:
    try:
        from semdb.bundles.store import find_bundle
    except ImportError:
        return None
    try:
        find_bundle(DEFAULT_BASELINE, verify=False)
    except SemdbError:
        click.echo(
            f"note: no baseline ({DEFAULT_BASELINE} is not in the model store; import it with "
            "semdb model import, or name one with --baseline)",
            err=True,
        )
        return None
    return DEFAULT_BASELINE


def _encoder(name: str, backend: str, precision: str | None) -> Any:
    from training.encoders import load_encoder

    if backend == "torch" or (backend == "auto" and _is_checkpoint(name)):
        require_training_stack()
    return load_encoder(name, backend=backend, precision=precision, progress=True)  # type: ignore[arg-type]


def _is_checkpoint(name: str) -> bool:
    path = Path(name).expanduser()
    return path.is_dir() and (path / "modules.json").is_file()


def _evaluate(encoder: Any, data: Any, name: str, search: str) -> Any:
    from training.evaluate import evaluate

    return evaluate(
        encoder,
        data,
        model=name,
        search="numpy" if search == "numpy" else "pgvector",
        cache_dir=_vector_cache(),
        progress=True,
    )


def _record(model: str, scored: list[tuple[str, str, Path, str, list[Any]]], when: str) -> None:
    from semdb.bundles.store import find_bundle
    from semdb.db import create_engine
    from training.publish import record_model_metrics

    if _is_checkpoint(model):
        raise SemdbError(
            f"{model} is a checkpoint folder, not a registered bundle: nothing to record",
            fix=f"export it first: semdb export {model} --name NAME",
        )
    bundle = find_bundle(model, verify=False)
    entries: dict[str, Any] = {}
    for set_name, role, folder, _, evaluations in scored:
        chosen = evaluations[-1]
        entry: dict[str, Any] = {
            **chosen.metrics,
            "role": role,
            "data": str(folder),
            "queries": chosen.queries,
            "documents": chosen.documents,
            "encoder": chosen.encoder,
            "search": chosen.search,
            "evaluated_at": when,
        }
        if len(evaluations) > 1:
            entry["baseline"] = {"model": evaluations[0].model, **evaluations[0].metrics}
        entries[set_name] = entry
    engine = create_engine()
    try:
        record_model_metrics(engine, bundle.name, bundle.version, {"eval": entries})
    finally:
        engine.dispose()
    click.echo(f"recorded in the registry: {bundle.name} {bundle.version} ({len(entries)} sets)")


# --- semdb export -------------------------------------------------------------------------


@click.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Bundle name (letters, digits, . _ + -).")
@click.option("--version", "version_", default="1", show_default=True, help="Bundle version.")
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(["fp32", "fp16", "int8"]),
    help="Graphs to write (repeat) [default: fp32 and int8; add fp16 for CUDA].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the bundle here instead of the model store (SEMDB_HOME/models).",
)
@click.option("--no-register", is_flag=True, help="Do not record the bundle in the database.")
@click.option("--activate", is_flag=True, help="Make it the active version of its name.")
@click.option(
    "--blend",
    type=float,
    help="Export (1 - A) x base + A x fine-tuned (0..1; 1: the fine-tuned model as it is) "
    "[default: the blend semdb train --general chose, if any].",
)
@click.option(
    "--base-model",
    type=click.Path(exists=True, file_okay=False),
    help="The base model to blend with [default: the one the run started from].",
)
def export_command(
    run: Path,
    name: str,
    version_: str,
    precisions: tuple[str, ...],
    out: Path | None,
    no_register: bool,
    activate: bool,
    blend: float | None,
    base_model: str | None,
) -> None:
    """Export a training RUN (or a model folder) to an ONNX bundle and register it.

    Pooling and normalisation are inside the graph; the export fails unless the fp32 graph
    matches PyTorch (cosine >= 0.9999). The run's validation scores go into the registry.
    """
    from training.publish import export_choice, publish_run

    choice = export_choice(run, blend=blend, base_model=base_model)  # bad input fails here
    require_training_stack()
    _quiet_libraries()
    if choice.alpha is not None and choice.alpha < 1.0:
        click.echo(
            f"exporting the blend a = {choice.alpha:.2f} ({choice.chosen_by}): "
            f"{1 - choice.alpha:.2f} x base + {choice.alpha:.2f} x fine-tuned"
        )
    published = publish_run(
        run,
        name=name,
        version=version_,
        precisions=precisions or ("fp32", "int8"),
        out=out,
        register=not no_register,
        activate=activate,
        progress=lambda message: click.echo(f"  {message}", err=True),
        blend=blend,
        base_model=base_model,
    )
    click.echo(f"bundle: {published.bundle_dir}")
    if published.registered:
        click.echo(f"registered as {name} {version_}")
    click.echo(f"next: semdb eval {name}@{version_} DATA --split test --record")


COMMANDS = (train_command, eval_command, export_command)
