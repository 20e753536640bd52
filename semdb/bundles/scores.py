"""A registered model's recorded scores, set by set, and what it forgot.

Scores live in the registry's ``metrics`` (``semdb.models``, a JSON object):

- ``eval.<set>``: what ``semdb eval --record`` measured on a BEIR set, with ``role``
  (``in-domain`` or ``general``: a set from another domain, named with ``--general``) and the
  ``baseline`` model's scores beside it;
- ``training.blend.sets.<set>``: what ``semdb train --general`` measured for the exported
  blend on its validation sets, with the base model's nDCG@10 (``base``);
- ``training.validation_ndcg@10``: the validation nDCG@10 before and after training.

:func:`forgotten` names the general sets on which the model lost more than a bound (points
of nDCG@10 against the base model): ``semdb model activate`` refuses those models unless
forced. Pure functions; no database, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GENERAL = "general"
IN_DOMAIN = "in-domain"
PRIMARY = "ndcg@10"


@dataclass(frozen=True)
class SetScore:
    """The model's nDCG@10 on one set, and the base (baseline) model's where recorded."""

    name: str
    role: str  # "in-domain" or "general"
    source: str  # "semdb eval" or "semdb train (validation)"
    model: float
    baseline: float | None
    queries: int | None = None

    @property
    def change_points(self) -> float | None:
        """The change over the baseline in points of nDCG@10 (x 100); None without one."""
        return None if self.baseline is None else 100 * (self.model - self.baseline)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def recorded_scores(metrics: Mapping[str, Any]) -> list[SetScore]:
    """Every set the registry's ``metrics`` hold a score for (see the module docstring)."""
    scores: list[SetScore] = []
    evaluations = metrics.get("eval")
    if isinstance(evaluations, Mapping):
        for name, entry in sorted(evaluations.items()):
            if not isinstance(entry, Mapping) or _number(entry.get(PRIMARY)) is None:
                continue
            baseline = entry.get("baseline")
            before = _number(baseline.get(PRIMARY)) if isinstance(baseline, Mapping) else None
            scores.append(
                SetScore(
                    name=str(name),
                    role=str(entry.get("role") or IN_DOMAIN),
                    source="semdb eval",
                    model=float(entry[PRIMARY]),
                    baseline=before,
                    queries=entry.get("queries"),
                )
            )
    training = metrics.get("training")
    if not isinstance(training, Mapping):
        return scores
    blend = training.get("blend")
    sets = blend.get("sets") if isinstance(blend, Mapping) else None
    if isinstance(sets, Mapping):
        for name, entry in sorted(sets.items()):
            if not isinstance(entry, Mapping) or _number(entry.get("model")) is None:
                continue
            scores.append(
                SetScore(
                    name=str(name),
                    role=str(entry.get("role") or IN_DOMAIN),
                    source="semdb train (validation)",
                    model=float(entry["model"]),
                    baseline=_number(entry.get("base")),
                    queries=entry.get("queries"),
                )
            )
    elif isinstance(training.get("validation_ndcg@10"), Mapping):
        validation = training["validation_ndcg@10"]
        best = _number(validation.get("best"))
        if best is not None:
            scores.append(
                SetScore(
                    name="validation",
                    role=IN_DOMAIN,
                    source="semdb train (validation)",
                    model=best,
                    baseline=_number(validation.get("before")),
                    queries=training.get("validation_queries"),
                )
            )
    return scores


def forgotten(scores: list[SetScore], bound: float) -> list[SetScore]:
    """The general sets on which the model lost more than ``bound`` points of nDCG@10."""
    return [
        s
        for s in scores
        if s.role == GENERAL and s.change_points is not None and -s.change_points > bound + 1e-9
    ]
