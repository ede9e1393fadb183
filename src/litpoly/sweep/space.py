"""The search-space file: what a sweep samples, on which base command, watching which metric.

Its keys are the fields of :class:`SearchSpace` (and of :class:`Param` and :class:`Pruner` below it); jsonargparse
checks a file against them, so a key that is not a field, or a value of the wrong type, is refused with the key's
name, as ``train.py`` refuses a flag. What a type cannot say (a range's ends in order, a log scale above 0) the
dataclasses check themselves, naming the setting.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ArgumentError, ArgumentParser
from jsonargparse.typing import NonNegativeInt, PositiveInt

from litpoly import compat, safe_yaml
from litpoly.errors import SettingError


@dataclass(frozen=True)
class Param:
    """One setting to sample, named by its flag (``model.lr``): a float or int range, or a list of choices.

    Args:
        low: The range's lower end.
        high: The range's upper end (above ``low``).
        log: Sample on a log scale (both ends above 0).
        step: Sample on a grid of this step from ``low`` (not with ``log``).
        type: ``float`` or ``int`` (an int range has whole ends and step).
        choices: The values to choose from, instead of a range.
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    type: Literal["float", "int"] = "float"
    choices: list[Any] | None = None

    def check(self, name: str) -> None:
        """Refuse what the types let through: a range out of order or not finite, choices with range settings.

        Raises:
            ValueError: One line naming ``params.<name>``.
        """
        where = f"`params.{name}`"
        if self.choices is not None:
            if not self.choices:
                raise ValueError(f"Expected {where}.choices to be a non-empty list, got []")
            if (self.low, self.high, self.step, self.log, self.type) != (None, None, None, False, "float"):
                raise ValueError(f"{where}: `choices` goes alone, without low, high, log, step or type")
            return
        low, high, step = self.low, self.high, self.step
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"Expected {where}.low and .high to be finite numbers, got {low!r} and {high!r}")
        if not low < high:
            raise ValueError(f"{where} is an empty range: low {low} must be below high {high}")
        if self.type == "int" and not all(float(v).is_integer() for v in (low, high, 1 if step is None else step)):
            raise ValueError(f"{where}: an int range needs whole numbers, got low {low}, high {high}, step {step}")
        import optuna

        try:  # the rest Optuna checks itself (a log scale above 0, no step with log, a positive step, …)
            if self.type == "int":
                optuna.distributions.IntDistribution(int(low), int(high), log=self.log, step=int(step or 1))
            else:
                optuna.distributions.FloatDistribution(low, high, log=self.log, step=step)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None

    def suggest(self, trial: Any, name: str) -> Any:
        """The value an Optuna trial draws for the setting ``name``."""
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.type == "int":
            step = int(self.step or 1)
            return trial.suggest_int(name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def probes(self) -> list[Any]:
        """Values that show whether ``train.py`` takes this setting at all: both ends, or every choice."""
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high] if self.type == "float" else [int(self.low or 0), int(self.high or 0)]


@dataclass(frozen=True)
class Pruner:
    """Optuna's ``MedianPruner``: a trial stops at a report worse than the median of the completed trials' reports
    at the same step.

    Args:
        n_startup_trials: Trials completed before any is pruned.
        n_warmup_steps: Steps of a trial before it may be pruned.
        interval_steps: Steps between two pruning decisions.
        n_min_trials: Trials that must have reported at a step before the median there counts.
    """

    n_startup_trials: NonNegativeInt = 5
    n_warmup_steps: NonNegativeInt = 0
    interval_steps: PositiveInt = 1
    n_min_trials: PositiveInt = 1


@dataclass(frozen=True)
class SearchSpace:
    """A sweep, as its YAML file describes it (:meth:`load` reads one).

    Example ``configs/sweeps/lr.yaml``::

        name: sgd-lr                  # the study, and its folder lightning_logs/sweeps/sgd-lr/
        metric: val/sse               # a metric every run logs at validation; the last value is the result
        direction: minimize           # or maximize
        trials: 16                    # finished trials (complete or pruned) the study is to have
        seed: 0                       # the sampler's seed
        args: [--config, configs/sgd.yaml]    # the base command: what `train.py fit` is given
        params:
          model.lr: {low: 1.0e-7, high: 1.0e-5, log: true}
          model.optimizer: {choices: [sgd, rmsprop]}
          data.batch_size: {low: 32, high: 256, type: int, log: true}
        pruner: {n_startup_trials: 5, n_warmup_steps: 500}   # Optuna's MedianPruner; null: no pruning

    Args:
        name: The study's name, and its folder's under ``lightning_logs/sweeps/``.
        metric: A metric every run logs at validation; its last value is a trial's result.
        params: The settings to sample, by flag (``model.lr``), each a range or choices.
        direction: ``minimize`` or ``maximize`` the metric.
        trials: Finished trials (complete or pruned) the study is to have.
        seed: The sampler's seed.
        args: The base command: what ``train.py fit`` is given before the sampled flags.
        pruner: Optuna's MedianPruner's settings; ``null``: no pruning.
    """

    name: str
    metric: str
    params: dict[str, Param]
    direction: Literal["minimize", "maximize"] = "minimize"
    trials: PositiveInt = 20
    seed: int = 0
    # (numbers and booleans too: a YAML list of flags and values, `[--trainer.max_steps, 300]`, holds them as such)
    args: list[str | int | float | bool] = field(default_factory=list)
    pruner: Pruner | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):  # a folder of lightning_logs/sweeps/ itself
            raise ValueError(
                "Expected `name` to be a study name of letters, digits, '.', '_' and '-' (its folder under "
                f"lightning_logs/sweeps/), got {self.name!r}"
            )
        if not self.params:
            raise ValueError("Expected `params` to map flags (e.g. model.lr) to ranges or choices, got none")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):  # jsonargparse lets `seed: null` through
            raise ValueError(f"Expected `seed` to be an integer, got {self.seed!r}")
        for name, param in self.params.items():
            param.check(name)

    @classmethod
    def load(cls, path: Path | str) -> SearchSpace:
        """Read and check a space file.

        Raises:
            SettingError: One line naming the file, the key and what is allowed.
        """
        try:
            content = safe_yaml.load(Path(path).read_text())
        except OSError as error:
            raise SettingError(f"cannot read the search space {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise SettingError(f"the search space {path} is not YAML: {error}") from None
        try:
            # Each param on its own first, so that a refused one is named (jsonargparse names only `params`).
            params = content.get("params") if isinstance(content, dict) else None
            for name, spec in (params or {}).items() if isinstance(params, dict) else ():
                _parsed(Param, spec, f"params.{name}")
            settings = _parsed(cls, content, None)
            return cls(
                **settings
                | {
                    "params": {name: Param(**spec) for name, spec in settings["params"].items()},
                    "pruner": None if settings["pruner"] is None else Pruner(**settings["pruner"]),
                    "args": [_text(word) for word in settings["args"] or ()],
                }
            )
        except ValueError as error:
            raise SettingError(f"the search space {path}: {error}") from None

    def flags(self, values: dict[str, Any]) -> list[str]:
        """``train.py fit``'s arguments for a trial with these settings."""
        sampled = (word for name, value in values.items() for word in (f"--{name}", _text(value)))
        return ["fit", *map(_text, self.args), *sampled]

    def described(self) -> dict[str, Any]:
        """What a study records of its space, to refuse a space file changed under it (the trials' settings)."""
        return {
            "metric": self.metric,
            "direction": self.direction,
            "args": [_text(word) for word in self.args],
            # (choices as a list, [] for a range: as studies begun before recorded it)
            "params": [
                {"name": name, **asdict(param), "choices": list(param.choices or [])}
                for name, param in self.params.items()
            ],
        }


def _parsed(kind: type, content: Any, key: str | None) -> dict[str, Any]:
    """``content`` checked by jsonargparse against the dataclass ``kind``'s fields, as plain values.

    Raises:
        ValueError: jsonargparse's complaint on one line, its keys under ``key``.
    """
    if not isinstance(content, dict):
        what, names = "the file" if key is None else f"`{key}`", ", ".join(f.name for f in fields(kind))
        raise ValueError(f"Expected {what} to be a mapping of {names}, got {content!r}")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(kind)
    try:
        parsed: dict[str, Any] = parser.parse_object(content).as_dict()
    except ArgumentError as error:
        line = compat.parse_error_line(str(error))
        if key is not None and 'Parser key "' in line:
            line = line.replace('Parser key "', f'Parser key "{key}.', 1)
        elif key is not None:
            line = f"`{key}`: {line}"
        raise ValueError(" ".join(line.split())) from None
    parsed.pop("__path__", None)
    return parsed


def _text(value: Any) -> str:
    """A value as a command-line word ``train.py`` parses back to the same value."""
    return (
        value
        if isinstance(value, str)
        else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
    )


def command(space: SearchSpace, values: dict[str, Any]) -> str:
    """The ``train.py`` command that runs a trial's settings again, as an ordinary run."""
    return shlex.join(["python", "scripts/train.py", *space.flags(values)])
