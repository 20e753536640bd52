"""The search space: which training settings a model selection tries, and over what ranges.

Every parameter is a setting of one training run (:class:`training.config.TrainConfig`, or
the mining margin). The default space (:data:`DEFAULT_SPACE`) is documented in
docs/training.md; a small TOML file replaces the ranges of the parameters it names::

    [learning_rate]
    low = 1e-5
    high = 1e-4
    log = true          # sampled on a log scale

    [batch_size]
    choices = [16, 32]  # one of these

    [max_seq_length]
    value = 64          # fixed: not searched

A range is ``low``/``high`` (and optionally ``log`` or ``step``), a list of ``choices``, or a
fixed ``value``. Empty and inverted ranges, values a training run cannot use, and names
that are no parameter are refused when the space is read, before anything trains.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semdb.errors import SelectionError

# name -> (int or float, smallest allowed, largest allowed, is the largest allowed itself)
PARAMETERS: dict[str, tuple[type, float, float, bool]] = {
    "learning_rate": (float, 0.0, 1.0, True),
    "warmup_ratio": (float, 0.0, 1.0, False),
    "batch_size": (int, 2, math.inf, True),
    "max_steps": (int, 1, math.inf, True),
    "scale": (float, 0.0, math.inf, True),  # the contrastive scale: 1 / temperature
    "hard_negatives": (int, 0, math.inf, True),
    "negative_margin": (float, 0.0, 1.0, False),
    "max_seq_length": (int, 8, math.inf, True),
}
_EXCLUSIVE_LOW = {"learning_rate", "scale"}  # must be above their smallest value

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"low": 1e-5, "high": 2e-4, "log": True},
    "warmup_ratio": {"low": 0.0, "high": 0.2},
    "batch_size": {"choices": [16, 32, 64]},
    "max_steps": {"low": 100, "high": 1000, "log": True},
    "scale": {"low": 10.0, "high": 50.0},
    "hard_negatives": {"low": 0, "high": 3},
    "negative_margin": {"low": 0.0, "high": 0.15, "step": 0.05},
    "max_seq_length": {"choices": [64, 128, 256]},
}
_KEYS = {"low", "high", "log", "step", "choices", "value"}


@dataclass(frozen=True)
class Parameter:
    """One searched (or fixed) setting."""

    name: str
    kind: type
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    value: Any = None

    def suggest(self, trial: Any) -> Any:
        """The value for ``trial`` (an ``optuna.trial.Trial``)."""
        if self.value is not None:
            return self.value
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind is int:
            step = int(self.step or 1)
            return trial.suggest_int(
                self.name, int(self.low or 0), int(self.high or 0), step=step, log=self.log
            )
        return trial.suggest_float(
            self.name, float(self.low or 0), float(self.high or 0), step=self.step, log=self.log
        )

    def contains(self, value: Any) -> bool:
        if value is None:
            return False
        if self.value is not None:
            return bool(value == self.value)
        if self.choices is not None:
            return value in self.choices
        assert self.low is not None and self.high is not None
        if not self.low <= value <= self.high:
            return False
        if self.step:
            ratio = (value - self.low) / self.step
            return abs(ratio - round(ratio)) < 1e-9
        return True

    def to_json(self) -> dict[str, Any]:
        if self.value is not None:
            return {"value": self.value}
        if self.choices is not None:
            return {"choices": list(self.choices)}
        data: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            data["log"] = True
        if self.step:
            data["step"] = self.step
        return data


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a search, by name; ``source`` says where the ranges came from."""

    parameters: dict[str, Parameter]
    source: str = "default"

    @classmethod
    def default(cls) -> SearchSpace:
        return cls.from_mapping({}, source="default")

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """The default space with the ranges that the TOML file at ``path`` names replaced."""
        path = Path(path)
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SelectionError(
                f"the search space file {path} does not exist", fix="give a TOML file"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise SelectionError(
                f"the search space file {path} is not valid TOML: {exc}",
                fix="see docs/training.md, Model selection, for its format",
            ) from exc
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, overrides: dict[str, Any], *, source: str = "given") -> SearchSpace:
        unknown = sorted(set(overrides) - set(PARAMETERS))
        if unknown:
            raise SelectionError(
                f"the search space ({source}) names {', '.join(map(repr, unknown))}, "
                "which is not a parameter of a training run",
                fix=f"use only: {', '.join(PARAMETERS)}",
            )
        parameters = {}
        for name in PARAMETERS:
            spec = overrides.get(name, DEFAULT_SPACE[name])
            parameters[name] = _parameter(name, spec, source)
        return cls(parameters, source)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """One value per parameter for ``trial``; the mining margin only with negatives."""
        values = {}
        for name, parameter in self.parameters.items():
            if name == "negative_margin" and values.get("hard_negatives") == 0:
                continue  # no negatives: the margin means nothing, do not make TPE learn it
            values[name] = parameter.suggest(trial)
        return values

    def within(self, values: dict[str, Any]) -> dict[str, Any]:
        """The entries of ``values`` that the space can produce (to enqueue the defaults)."""
        return {
            name: value
            for name, value in values.items()
            if name in self.parameters
            and self.parameters[name].value is None
            and self.parameters[name].contains(value)
        }

    def to_json(self) -> dict[str, Any]:
        return {name: p.to_json() for name, p in sorted(self.parameters.items())}

    def canonical(self) -> str:
        """The space as one JSON text, to compare with the one a study was started with."""
        return json.dumps(self.to_json(), sort_keys=True)


def _parameter(name: str, spec: Any, source: str) -> Parameter:
    kind, smallest, largest, largest_allowed = PARAMETERS[name]
    where = f"{name} in the search space ({source})"
    if not isinstance(spec, dict):
        raise SelectionError(
            f"{where} is {spec!r}, not a table",
            fix=f"write [{name}] with low/high, choices or value under it",
        )
    extra = sorted(set(spec) - _KEYS)
    if extra:
        raise SelectionError(
            f"{where} has unknown keys {', '.join(extra)}",
            fix="use low, high (with log or step), choices, or value",
        )

    def checked(value: Any, what: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SelectionError(f"{where}: {what} is {value!r}, not a number")
        if kind is int and float(value) != int(value):
            raise SelectionError(f"{where}: {what} is {value!r}, not a whole number")
        too_low = value <= smallest if name in _EXCLUSIVE_LOW else value < smallest
        too_high = value > largest if largest_allowed else value >= largest
        if too_low or too_high:
            low_bracket = "(" if name in _EXCLUSIVE_LOW else "["
            high_bracket = "]" if largest_allowed else ")"
            raise SelectionError(
                f"{where}: {what} {value!r} is outside what a training run can use "
                f"({low_bracket}{smallest:g}, {largest:g}{high_bracket})",
                fix=f"keep {name} within {low_bracket}{smallest:g}, {largest:g}{high_bracket}",
            )
        return int(value) if kind is int else float(value)

    if "value" in spec:
        if len(spec) > 1:
            raise SelectionError(f"{where}: a fixed value takes no other keys", fix="keep value")
        return Parameter(name, kind, value=checked(spec["value"], "value"))
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            raise SelectionError(f"{where}: choices take no other keys", fix="keep choices")
        if not isinstance(choices, list) or not choices:
            raise SelectionError(
                f"{where}: the list of choices is empty",
                fix="give at least one value, or remove the table to keep the default range",
            )
        values = tuple(dict.fromkeys(checked(c, "a choice") for c in choices))
        return Parameter(name, kind, choices=values)
    if "low" not in spec or "high" not in spec:
        raise SelectionError(
            f"{where} needs low and high (or choices, or value)",
            fix=f"for example: [{name}] low = ... high = ...",
        )
    low, high = checked(spec["low"], "low"), checked(spec["high"], "high")
    if low > high:
        raise SelectionError(
            f"{where}: the range is inverted (low {low!r} > high {high!r})",
            fix="swap low and high",
        )
    if low == high:
        raise SelectionError(
            f"{where}: the range is empty (low = high = {low!r})",
            fix=f"to fix {name} at one value write value = {low!r}; else widen the range",
        )
    log = bool(spec.get("log", False))
    step = spec.get("step")
    if log and step is not None:
        raise SelectionError(f"{where}: log and step cannot both be set", fix="keep one")
    if log and low <= 0:
        raise SelectionError(
            f"{where}: a log range must start above 0 (low is {low!r})",
            fix="raise low, or drop log = true",
        )
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0:
            raise SelectionError(f"{where}: step is {step!r}, not a positive number")
        if step > high - low:
            raise SelectionError(
                f"{where}: the step {step!r} is wider than the range {low!r}..{high!r}",
                fix="use a smaller step or a wider range",
            )
        step = int(step) if kind is int else float(step)
    return Parameter(name, kind, low=low, high=high, log=log, step=step)
