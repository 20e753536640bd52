"""Fine-tuning that keeps what the base model knew: blend in weight space, choose how much.

Fine-tuning on one domain lifts retrieval there and often lowers it elsewhere (measured:
all-MiniLM-L6-v2 trained on Debian package descriptions lost 2.8 points of nDCG@10 on a set of
FAQ pairs). Interpolating the weights of the fine-tuned model and its base (WiSE-FT,
Wortsman et al. 2022) keeps most of the in-domain gain at a small part of the loss::

    theta(a) = (1 - a) * theta_base + a * theta_fine_tuned

Both models have the same architecture, so the blend is one model like the others: one ONNX
graph, nothing more at search time. ``a = 0`` is the base model, ``a = 1`` the fine-tuned one.

**The rule** (:func:`choose_alpha`): score every ``a`` of the curve (0 to 1 in steps of 0.1)
on the in-domain validation queries and on each general set; keep the ``a`` whose general
sets each lost at most ``bound`` points of nDCG@10 against the base (``a = 0``, default bound
1 point); among those, take the one with the best in-domain nDCG@10 (ties: the smaller ``a``,
closer to the base). ``a = 0`` always qualifies, so there is always a choice.

Scores here come from the PyTorch model (:class:`~training.validation.ValidationEvaluator`:
exact cosine top k in memory, semdb's metrics), on at most ``queries`` queries of each set
against their relevant documents and up to ``corpus`` others (seeded): enough to rank blends,
cheap enough to run eleven times.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from semdb.errors import BlendError
from training.data import RetrievalSet

logger = logging.getLogger(__name__)

ALPHAS = tuple(round(step / 10, 1) for step in range(11))
DEFAULT_BOUND = 1.0  # points of nDCG@10 (x 100) a general set may lose against the base
PRIMARY = "ndcg@10"
BLEND_FILE = "blend.json"
PLOT_FILE = "blend.png"
BLENDED_DIR = "blended"
IN_DOMAIN = "in-domain"
GENERAL = "general"
RULE = (
    "the a (0 to 1) with the best in-domain nDCG@10 among those whose nDCG@10 on every general "
    "set is at most `bound` points below the base model's (a = 0); ties: the smaller a"
)
# Configuration values two models must share to be blended.
_CONFIG_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "type_vocab_size",
)


def check_bound(bound: float) -> float:
    """``bound`` (points of nDCG@10), or a :class:`BlendError` when it is negative or NaN."""
    if not isinstance(bound, int | float) or math.isnan(bound) or bound < 0:
        raise BlendError(
            f"the forgetting bound must be 0 or more points of nDCG@10, not {bound}",
            fix="give a bound such as 1.0 (one point; 0 allows no loss at all)",
        )
    return float(bound)


def check_alpha(alpha: float) -> float:
    if not isinstance(alpha, int | float) or math.isnan(alpha) or not 0.0 <= alpha <= 1.0:
        raise BlendError(
            f"the blend weight a must be between 0 (the base model) and 1 (the fine-tuned "
            f"model), not {alpha}",
            fix="give a value such as 0.5",
        )
    return float(alpha)


# -- which models can be blended -----------------------------------------------------------


def model_facts(model_dir: str | Path) -> dict[str, Any]:
    """What two models must share to be blended, read from their files (no torch):
    the modules in order, the transformer's configuration, the embedding dimension and the
    vocabulary's size and hash."""
    folder = Path(model_dir)
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        raise BlendError(
            f"{folder} is not a sentence-transformers model folder (no modules.json)",
            fix="give the folder SentenceTransformer.save() wrote (a run's model/ folder)",
        )
    modules = json.loads(modules_file.read_text())
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    facts: dict[str, Any] = {"modules": kinds}
    transformer = next((m for m in modules if str(m.get("type", "")).endswith("Transformer")), None)
    config_dir = folder / str(transformer.get("path", "")) if transformer else folder
    config_file = config_dir / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        facts.update({key: config.get(key) for key in _CONFIG_KEYS})
    dimension = None
    for module in modules:
        module_config = folder / str(module.get("path", "")) / "config.json"
        if not module.get("path") or not module_config.is_file():
            continue
        values = json.loads(module_config.read_text())
        if "out_features" in values:  # a Dense layer decides the dimension
            dimension = values["out_features"]
        elif "word_embedding_dimension" in values and dimension is None:
            dimension = values["word_embedding_dimension"]
    facts["dimension"] = dimension or facts.get("hidden_size")
    tokenizer_file = config_dir / "tokenizer.json"
    if tokenizer_file.is_file():
        vocab = json.loads(tokenizer_file.read_text()).get("model", {}).get("vocab")
        if isinstance(vocab, dict):
            facts["vocabulary"] = _hash(sorted(vocab.items()))
        elif isinstance(vocab, list):
            facts["vocabulary"] = _hash(vocab)
    return facts


def _hash(value: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def check_blendable(base_dir: str | Path, tuned_dir: str | Path) -> None:
    """A :class:`BlendError` naming what differs when the two models cannot be blended."""
    base, tuned = model_facts(base_dir), model_facts(tuned_dir)
    differences = [
        f"{key} {base.get(key)!r} vs {tuned.get(key)!r}"
        for key in sorted(set(base) | set(tuned))
        if key in base and key in tuned and base[key] != tuned[key]
    ]
    if differences:
        raise BlendError(
            f"{base_dir} and {tuned_dir} cannot be blended: they differ in "
            + "; ".join(differences),
            fix="blend a fine-tuned model with the base model it was trained from",
        )


# -- the blend ---------------------------------------------------------------------------------


class Blender:
    """The fine-tuned model, whose weights :meth:`set_alpha` sets to a blend with the base."""

    def __init__(self, base_dir: str | Path, tuned_dir: str | Path, *, device: str | None = None):
        check_blendable(base_dir, tuned_dir)
        import torch
        from sentence_transformers import SentenceTransformer

        self.base_dir, self.tuned_dir = Path(base_dir), Path(tuned_dir)
        self.model = SentenceTransformer(str(tuned_dir), device=device, local_files_only=True)
        base = SentenceTransformer(str(base_dir), device="cpu", local_files_only=True)
        tuned_state = self.model.state_dict()
        base_state = base.state_dict()
        if set(tuned_state) != set(base_state):
            only = sorted(set(tuned_state) ^ set(base_state))[:3]
            raise BlendError(
                f"{base_dir} and {tuned_dir} cannot be blended: their weights differ "
                f"(for example {', '.join(only)})",
                fix="blend a fine-tuned model with the base model it was trained from",
            )
        shapes = [k for k in tuned_state if tuned_state[k].shape != base_state[k].shape]
        if shapes:
            key = shapes[0]
            raise BlendError(
                f"{base_dir} and {tuned_dir} cannot be blended: {key} has shape "
                f"{tuple(base_state[key].shape)} vs {tuple(tuned_state[key].shape)}",
                fix="blend a fine-tuned model with the base model it was trained from",
            )
        device_of = {k: v.device for k, v in tuned_state.items()}
        self._tuned = {k: v.detach().clone() for k, v in tuned_state.items()}
        self._base = {k: v.detach().to(device_of[k]).clone() for k, v in base_state.items()}
        self._torch = torch
        self.alpha = 1.0
        self.max_seq_length = int(self.model.max_seq_length)

    def set_alpha(self, alpha: float) -> Any:
        """Set the model's weights to ``(1 - alpha) * base + alpha * fine_tuned``; the model."""
        alpha = check_alpha(alpha)
        torch = self._torch
        with torch.no_grad():
            state = {
                key: torch.lerp(self._base[key], tuned, alpha)
                if tuned.is_floating_point()
                else tuned
                for key, tuned in self._tuned.items()
            }
            self.model.load_state_dict(state)
        self.alpha = alpha
        return self.model

    def save(self, alpha: float, out_dir: str | Path) -> Path:
        """Write the blend at ``alpha`` as a sentence-transformers folder at ``out_dir``."""
        self.set_alpha(alpha)
        saved = self.model.max_seq_length
        self.model.max_seq_length = self.max_seq_length
        try:
            self.model.save(str(out_dir))
        finally:
            self.model.max_seq_length = saved
        (Path(out_dir) / "semdb_blend.json").write_text(
            json.dumps(
                {"alpha": alpha, "base": str(self.base_dir), "fine_tuned": str(self.tuned_dir)},
                indent=2,
            )
        )
        return Path(out_dir)


def save_blend(
    base_dir: str | Path, tuned_dir: str | Path, alpha: float, out_dir: str | Path
) -> Path:
    """Write ``(1 - alpha) * base + alpha * fine_tuned`` as a sentence-transformers folder."""
    check_alpha(alpha)
    return Blender(base_dir, tuned_dir, device="cpu").save(alpha, out_dir)


@contextmanager
def blended_folder(base_dir: str | Path, tuned_dir: str | Path, alpha: float) -> Iterator[Path]:
    """A temporary folder holding the blend at ``alpha`` (removed afterwards)."""
    work = Path(tempfile.mkdtemp(prefix="semdb-blend-"))
    try:
        yield save_blend(base_dir, tuned_dir, alpha, work / "model")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- scoring the curve -------------------------------------------------------------------------


@dataclass
class ScoredSet:
    """One set the curve is scored on: its name, role and (sampled) queries and corpus."""

    name: str
    role: str  # IN_DOMAIN or GENERAL
    data: RetrievalSet

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "queries": len(self.data.query_ids),
            "documents": len(self.data.corpus),
        }


def sample_set(data: RetrievalSet, *, queries: int, corpus: int, seed: int) -> RetrievalSet:
    """At most ``queries`` of ``data``'s queries (seeded), their relevant documents and
    random others, ``corpus`` documents in all (more when the relevant ones need it)."""
    ids = sorted(data.query_ids)
    random.Random(seed).shuffle(ids)
    keep = set(ids[:queries])
    chosen = [q for q in data.query_ids if q in keep]
    needed = {d for q in chosen for d in data.qrels[q]}
    others = sorted(d for d in data.corpus if d not in needed)
    random.Random(seed + 1).shuffle(others)
    documents = needed | set(others[: max(0, corpus - len(needed))])
    return RetrievalSet(
        queries={q: data.queries[q] for q in chosen},
        corpus={d: t for d, t in data.corpus.items() if d in documents},
        qrels={q: dict(data.qrels[q]) for q in chosen},
    )


@dataclass
class CurvePoint:
    alpha: float
    scores: dict[str, dict[str, float]]  # set name -> metric -> value


@dataclass
class BlendReport:
    """The curve, the rule's choice, and what it was measured on."""

    bound: float
    chosen: float
    sets: list[dict[str, Any]]
    curve: list[CurvePoint]
    rule: str = RULE
    base_model: str = ""
    fine_tuned_model: str = ""
    max_tokens: int | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def point(self, alpha: float) -> CurvePoint | None:
        return next((p for p in self.curve if math.isclose(p.alpha, alpha)), None)

    def changes(self, alpha: float) -> dict[str, dict[str, Any]]:
        """Per set at ``alpha``: role, the base's nDCG@10, this blend's, the change in points."""
        point, base = self.point(alpha), self.point(0.0)
        if point is None or base is None:
            return {}
        result = {}
        for described in self.sets:
            name = described["name"]
            before, after = base.scores[name][PRIMARY], point.scores[name][PRIMARY]
            result[name] = {
                "role": described["role"],
                "queries": described["queries"],
                "base": round(before, 4),
                "model": round(after, 4),
                "change_points": round(100 * (after - before), 2),
            }
        return result

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["changes_at_chosen"] = self.changes(self.chosen)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BlendReport:
        curve = [CurvePoint(float(p["alpha"]), dict(p["scores"])) for p in data["curve"]]
        known = {k: data[k] for k in ("rule", "base_model", "fine_tuned_model") if k in data}
        return cls(
            bound=float(data["bound"]),
            chosen=float(data["chosen"]),
            sets=list(data["sets"]),
            curve=curve,
            max_tokens=data.get("max_tokens"),
            seconds=float(data.get("seconds", 0.0)),
            extra=dict(data.get("extra", {})),
            **known,
        )


def choose_alpha(
    curve: Sequence[CurvePoint], sets: Sequence[Mapping[str, Any]], bound: float
) -> float:
    """The rule (module docstring): the best in-domain nDCG@10 among the blends whose
    general sets each lost at most ``bound`` points against ``a = 0``; ties: the smaller a."""
    check_bound(bound)
    base = next((p for p in curve if math.isclose(p.alpha, 0.0)), None)
    if base is None:
        raise BlendError("the blend curve has no a = 0 point (the base model) to compare with")
    in_domain = [s["name"] for s in sets if s["role"] == IN_DOMAIN]
    general = [s["name"] for s in sets if s["role"] == GENERAL]
    if len(in_domain) != 1:
        raise BlendError(f"the blend curve needs one in-domain set, not {len(in_domain)}")
    tolerance = 1e-9

    def allowed(point: CurvePoint) -> bool:
        return all(
            100 * (base.scores[g][PRIMARY] - point.scores[g][PRIMARY]) <= bound + tolerance
            for g in general
        )

    candidates = [p for p in curve if allowed(p)]
    best = max(candidates, key=lambda p: (round(p.scores[in_domain[0]][PRIMARY], 9), -p.alpha))
    return best.alpha


def score_model(model: Any, data: RetrievalSet, *, batch_size: int = 64) -> dict[str, float]:
    """semdb's metrics of a sentence-transformers model on ``data`` (exact search in memory)."""
    from training.validation import ValidationEvaluator

    evaluator = ValidationEvaluator(
        queries={q: data.queries[q] for q in data.query_ids},
        corpus=data.corpus,
        qrels={q: data.qrels[q] for q in data.query_ids},
        name="blend",
        batch_size=batch_size,
    )
    scores = evaluator(model)
    prefix = "blend_cosine_"
    return {key[len(prefix) :]: float(value) for key, value in scores.items()}


def blend_curve(
    blender: Blender,
    sets: Sequence[ScoredSet],
    *,
    bound: float = DEFAULT_BOUND,
    alphas: Sequence[float] = ALPHAS,
    max_tokens: int | None = None,
    progress: Any = None,
) -> BlendReport:
    """Score the blend at every ``alpha`` on every set and choose ``a`` by the rule."""
    import time

    check_bound(bound)
    alphas = sorted({round(check_alpha(a), 6) for a in (*alphas, 0.0, 1.0)})
    say = progress or (lambda message: logger.info("%s", message))
    started = time.perf_counter()
    saved_length = blender.model.max_seq_length
    if max_tokens:
        blender.model.max_seq_length = min(max_tokens, blender.max_seq_length)
    curve = []
    try:
        for alpha in alphas:
            model = blender.set_alpha(alpha)
            scores = {s.name: score_model(model, s.data) for s in sets}
            curve.append(CurvePoint(alpha, scores))
            say(
                f"a = {alpha:.1f}: "
                + ", ".join(f"{name} {values[PRIMARY]:.4f}" for name, values in scores.items())
            )
    finally:
        blender.model.max_seq_length = saved_length
    described = [s.describe() for s in sets]
    return BlendReport(
        bound=bound,
        chosen=choose_alpha(curve, described, bound),
        sets=described,
        curve=curve,
        base_model=str(blender.base_dir),
        fine_tuned_model=str(blender.tuned_dir),
        max_tokens=max_tokens,
        seconds=round(time.perf_counter() - started, 1),
    )


# -- reporting ---------------------------------------------------------------------------------


def curve_table(report: BlendReport, *, title: str | None = None) -> Any:
    """A rich table: one row per a, each set's nDCG@10 and change over a = 0, the choice."""
    from rich.table import Table

    base = report.point(0.0)
    default = f"blend curve: nDCG@10 (change over the base in points, bound {report.bound:g})"
    table = Table(title=title or default)
    table.add_column("a", justify="right")
    for described in report.sets:
        table.add_column(f"{described['name']} ({described['role']})", justify="right")
    table.add_column("")
    for point in report.curve:
        cells = []
        for described in report.sets:
            value = point.scores[described["name"]][PRIMARY]
            change = 100 * (value - base.scores[described["name"]][PRIMARY]) if base else 0.0
            cells.append(f"{value:.4f} ({change:+.2f})")
        label = "base" if point.alpha == 0 else "fine-tuned" if point.alpha == 1 else ""
        if math.isclose(point.alpha, report.chosen):
            label = f"{label} chosen".strip()
        table.add_row(f"{point.alpha:.1f}", *cells, label)
    return table


def plot_curve(report: BlendReport, path: str | Path, *, title: str | None = None) -> Path:
    """A PNG of each set's change in nDCG@10 over the base against a, the bound, the choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = report.point(0.0)
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    alphas = [p.alpha for p in report.curve]
    for described in report.sets:
        name = described["name"]
        start = base.scores[name][PRIMARY] if base else 0.0
        changes = [100 * (p.scores[name][PRIMARY] - start) for p in report.curve]
        style = "-" if described["role"] == IN_DOMAIN else "--"
        axes.plot(alphas, changes, style, marker="o", label=f"{name} ({described['role']})")
    axes.axhline(-report.bound, color="grey", linewidth=1, linestyle=":")
    axes.text(0.0, -report.bound, f" bound -{report.bound:g}", va="bottom", color="grey")
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.axvline(report.chosen, color="tab:red", linewidth=1)
    axes.text(report.chosen, axes.get_ylim()[1], f" chosen a = {report.chosen:.1f}", va="top")
    axes.set_xlabel("a   (0: base model, 1: fine-tuned model)")
    axes.set_ylabel("nDCG@10 change over the base (points)")
    axes.set_title(title or "blend of base and fine-tuned weights")
    axes.set_xticks([round(a, 1) for a in alphas])
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
