"""The selection's report: ``<run>/selection.json``, a table, and ``<run>/selection.png``.

The JSON lists every trial of the study (number, state, mean and standard deviation of the
validation nDCG@10 over folds, each fold's score, the configuration, seconds, the process
that ran it, and for a retried trial the trial it repeats), the chosen trial, the
parameters' importances, the retrained model and its test scores.

The plot has two panels: validation nDCG@10 against trial number (complete trials with
their fold standard deviation, pruned ones at their last reported score, the best so far
as a line), and against the most important parameter (Optuna's fANOVA importance; with
too few trials for it, the parameter whose values explain most of the scores' variance).
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

from training.selection.space import SearchSpace

REPORT_FILE = "selection.json"
PLOT_FILE = "selection.png"


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        intermediate = trial.intermediate_values
        last = intermediate[max(intermediate)] if intermediate else None
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name.lower(),
                # a pruned trial's value is its last report (one fold's score): not a mean
                "mean": trial.value if trial.state.name == "COMPLETE" else None,
                "std": trial.user_attrs.get("std"),
                "fold_scores": trial.user_attrs.get("fold_scores"),
                "last_reported": last,
                "config": trial.user_attrs.get("config") or trial.params,
                "seconds": trial.user_attrs.get("seconds"),
                "process": trial.user_attrs.get("process"),
                "origin": trial.user_attrs.get("origin"),
                "retry_of": trial.system_attrs.get("failed_trial"),
            }
        )
    return rows


def importances(study: Any) -> tuple[dict[str, float], str]:
    """Parameter -> importance, and how it was measured."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
        if found:
            return {k: round(float(v), 4) for k, v in found.items()}, "optuna fANOVA (seed 0)"
    except (ValueError, RuntimeError):
        pass
    return variance_explained(complete), "share of variance explained (too few trials for fANOVA)"


def variance_explained(trials: list[Any]) -> dict[str, float]:
    """Per parameter, the share of the scores' variance its values explain (eta squared over
    its distinct values, or over quartiles for continuous ones)."""
    values = [t.value for t in trials if t.value is not None]
    if len(values) < 2 or statistics.pvariance(values) == 0:
        return {}
    total = statistics.pvariance(values) * len(values)
    mean = statistics.fmean(values)
    result = {}
    names = sorted({name for t in trials for name in t.params})
    for name in names:
        pairs = [
            (t.params[name], t.value) for t in trials if name in t.params and t.value is not None
        ]
        if len({p for p, _ in pairs}) < 2:
            continue
        levels = sorted({p for p, _ in pairs})
        cuts = [levels[round(i * (len(levels) - 1) / 4)] for i in range(1, 4)]
        groups: dict[Any, list[float]] = {}
        for parameter, value in pairs:
            group = sum(parameter > c for c in cuts) if len(levels) > 4 else parameter
            groups.setdefault(group, []).append(value)
        between = sum(len(g) * (statistics.fmean(g) - mean) ** 2 for g in groups.values())
        result[name] = round(between / total, 4)
    return dict(sorted(result.items(), key=lambda item: -item[1]))


def build_report(
    study: Any,
    *,
    chosen: int,
    folds: int | None,
    space: SearchSpace,
    final: dict[str, Any],
    test: dict[str, Any] | None,
    test_source: str,
    seconds: float,
) -> dict[str, Any]:
    rows = trial_rows(study)
    chosen_row = next(r for r in rows if r["number"] == chosen)
    weights, method = importances(study)
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    return {
        "study": study.study_name,
        "folds": folds,
        "space": space.to_json(),
        "space_source": space.source,
        "trials": rows,
        "trial_states": states,
        "chosen": {
            "number": chosen,
            "config": chosen_row["config"],
            "validation_ndcg@10": {"mean": chosen_row["mean"], "std": chosen_row["std"]},
            "fold_scores": chosen_row["fold_scores"],
        },
        "importance": {"method": method, "values": weights},
        "final": final,
        "test": None
        if test is None
        else {
            "source": test_source,
            "metrics": test["metrics"],
            "queries": test["queries"],
            "documents": test["documents"],
            "encoder": test["encoder"],
            "search": test["search"],
        },
        "seconds": round(seconds, 1),
    }


def write_report(report: dict[str, Any], run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    plot_report(report, run_dir / PLOT_FILE)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def trials_table(report: dict[str, Any]) -> Any:
    """A rich table: one row per trial, the chosen one marked."""
    from rich.table import Table

    folds = report.get("folds")
    table = Table(
        title=f"study {report['study']}: validation nDCG@10"
        + (f", mean +/- std over {folds} folds" if folds else "")
    )
    table.add_column("trial", justify="right")
    table.add_column("state")
    table.add_column("nDCG@10", justify="right")
    if folds:
        table.add_column("std", justify="right")
    names = list(report["space"])
    for name in names:
        table.add_column(_short(name), justify="right")
    table.add_column("s", justify="right")
    table.add_column("note")
    chosen = report["chosen"]["number"]
    for row in report["trials"]:
        note = []
        if row["number"] == chosen:
            note.append("chosen")
        if row.get("origin") == "defaults":
            note.append("defaults")
        if row.get("retry_of") is not None:
            note.append(f"retry of {row['retry_of']}")
        if row["state"] == "pruned" and row["last_reported"] is not None:
            folds_done = len(row.get("fold_scores") or [])
            note.append(f"pruned in fold {folds_done} at {row['last_reported']:.4f}")
        cells = [str(row["number"]), row["state"], _score(row["mean"])]
        if folds:
            cells.append("-" if row["std"] is None else f"{row['std']:.4f}")
        config = row["config"] or {}
        cells += [_value(config.get(name)) for name in names]
        cells += ["-" if row["seconds"] is None else f"{row['seconds']:.0f}", ", ".join(note)]
        table.add_row(*cells, style="bold green" if row["number"] == chosen else None)
    return table


def _short(name: str) -> str:
    return {
        "learning_rate": "lr",
        "warmup_ratio": "warmup",
        "batch_size": "batch",
        "max_steps": "steps",
        "hard_negatives": "negs",
        "negative_margin": "margin",
        "max_seq_length": "tokens",
    }.get(name, name)


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2e}" if value and abs(value) < 1e-2 else f"{value:.3g}"
    return str(value)


def summary_lines(report: dict[str, Any]) -> list[str]:
    chosen = report["chosen"]
    score = chosen["validation_ndcg@10"]
    spread = f" +/- {score['std']:.4f}" if score.get("std") is not None else ""
    lines = [
        f"chosen: trial {chosen['number']}, validation nDCG@10 {score['mean']:.4f}{spread}",
        "config: " + ", ".join(f"{k}={_value(v)}" for k, v in sorted(chosen["config"].items())),
    ]
    test = report.get("test")
    if test:
        lines.append(
            f"test nDCG@10 ({test['source']}, {test['queries']} queries, scored once): "
            f"{test['metrics']['ndcg@10']:.4f}"
        )
    weights = report["importance"]["values"]
    if weights:
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(weights.items())[:3])
        lines.append(f"importance ({report['importance']['method']}): {top}")
    return lines


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["trials"]
    complete = [r for r in rows if r["state"] == "complete" and r["mean"] is not None]
    pruned = [r for r in rows if r["state"] == "pruned" and r["last_reported"] is not None]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.errorbar(
        [r["number"] for r in complete],
        [r["mean"] for r in complete],
        yerr=[r["std"] or 0.0 for r in complete],
        fmt="o",
        capsize=3,
        label="complete (mean +/- fold std)",
    )
    if pruned:
        left.scatter(
            [r["number"] for r in pruned],
            [r["last_reported"] for r in pruned],
            marker="x",
            color="grey",
            label="pruned (last fold score reported)",
        )
    best, running = [], -math.inf
    for row in sorted(complete, key=lambda r: r["number"]):
        running = max(running, row["mean"])
        best.append((row["number"], running))
    if best:
        left.step([b[0] for b in best], [b[1] for b in best], where="post", label="best so far")
    chosen = report["chosen"]["number"]
    chosen_row = next((r for r in complete if r["number"] == chosen), None)
    if chosen_row:
        left.scatter(
            [chosen],
            [chosen_row["mean"]],
            s=160,
            facecolors="none",
            edgecolors="red",
            label="chosen",
        )
    from matplotlib.ticker import MaxNLocator

    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("trial")
    left.set_ylabel("validation nDCG@10")
    left.legend(fontsize=8)
    weights = report["importance"]["values"]
    name = next(iter(weights), None)
    if name is not None:
        points = [
            (r["config"].get(name), r["mean"])
            for r in complete
            if r["config"].get(name) is not None
        ]
        right.scatter([p[0] for p in points], [p[1] for p in points])
        if report["space"].get(name, {}).get("log"):
            right.set_xscale("log")
        if chosen_row and chosen_row["config"].get(name) is not None:
            right.scatter(
                [chosen_row["config"][name]],
                [chosen_row["mean"]],
                s=160,
                facecolors="none",
                edgecolors="red",
            )
        right.set_xlabel(f"{name} (importance {weights[name]:.2f})")
        right.set_ylabel("validation nDCG@10")
    else:
        right.text(0.5, 0.5, "no parameter varied enough to rank", ha="center", va="center")
        right.set_axis_off()
    figure.suptitle(f"model selection: study {report['study']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
