"""Repeats, medians and spreads; ratios, the breakdown, memory growth and start-up, against the targets."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.contestants import Spec, run, run_in_new_process

#: A row whose repeats spread (their interquartile range) by more than this share of its median is not a result.
MAX_SPREAD = 0.10

#: Seconds to wait before a large run: right after another process has freed gigabytes, the kernel is still
#: taking the pages back, and a run started at once is slowed by it.
SETTLE_S = 5.0

#: The breakdown at the seed's size (SGD): each entry switches one of litpoly's default features off; its cost
#: is the step time that saves. The profiler entry goes the other way: it puts Lightning's own no-op profiler
#: back, so its "cost" is negative: what litpoly's NullProfiler saves.
FEATURES: dict[str, tuple[str, ...]] = {
    "TensorBoard (logger, scalars, figure)": ("--trainer.logger", "false"),
    "  of which the fit figure": ("--model.figure", "false"),
    "validation every 100 steps (metrics, figure)": ("--trainer.val_check_interval", str(10**9)),
    "checkpoints (every 500 steps, last, best)": ("--trainer.enable_checkpointing", "false"),
    "progress bar": ("--trainer.enable_progress_bar", "false"),
    "console lines (every 100 steps)": ("--console.every_n_steps", str(10**9)),
    "divergence check (every step)": ("--guard.check_finite", "false"),
    "parity check (recording every step)": ("--model.parity", "false"),
    "NullProfiler (negative: what it saves)": ("--trainer.profiler", "lightning.pytorch.profilers.PassThroughProfiler"),
}


#: The ``compiled`` contestant: litpoly's fit with ``--compile true`` (torch.compile of the model's forward); its
#: compilation falls before the timed steps.
COMPILED = ("--compile", "true")


@dataclass(frozen=True)
class Window:
    """A run's length and the steps timed: ``start`` … ``stop`` step ends, start-up and the first steps excluded;
    the step time is that of the fastest stretch of ``every`` steps among them (:class:`bench.clock.StepClock`)."""

    steps: int
    start: int
    stop: int
    every: int | None = None


def window_for(size: int, quick: bool) -> Window:
    if quick:
        return Window(steps=80, start=20, stop=70)
    # A small step is timed over 2000 steps (the default run's length, validations and checkpoints included), in
    # four stretches of 500 steps, each with the same 5 validations, 10 logging steps and 1 periodic checkpoint;
    # a large one, whose every step is long, over 20, after 5 steps of warm-up.
    return Window(2400, 200, 2200, every=500) if size <= 100_000 else Window(30, 5, 25)


def repeats_for(size: int, asked: int | None) -> int:
    """5 repeats: fewer leave a median that one disturbed process moves (on a shared machine, one often is)."""
    return asked if asked is not None else 5


def contestants(
    size: int, device: str, window: Window, breakdown: bool, optimizers: tuple[str, ...] = ("sgd", "rmsprop")
) -> dict[str, Spec]:
    """Every contestant at ``size`` points, by name (``kind/optimizer``, or the feature switched off); RMSprop
    only up to 100 000 points."""

    def spec(kind: str, optimizer: str, flags: tuple[str, ...] = ()) -> Spec:
        return Spec(kind, optimizer, size, device, window.steps, window.start, window.stop, flags, window.every)

    small = size <= 100_000
    optimizers = optimizers if small else ("sgd",)
    specs = {f"{kind}/{opt}": spec(kind, opt) for opt in optimizers for kind in ("raw", "bare", "litpoly")}
    if small:
        specs["bare-null/sgd"] = spec("bare-null", "sgd")
        specs |= {f"plain/{opt}": spec("plain", opt) for opt in optimizers}
    if "sgd" in optimizers:
        specs["compiled/sgd"] = spec("litpoly", "sgd", COMPILED)
    if breakdown:
        specs |= {f"without {name.strip()}": spec("litpoly", "sgd", flags) for name, flags in FEATURES.items()}
    return specs


@dataclass
class Row:
    """One contestant's repeats."""

    spec: Spec
    results: list[dict[str, Any]]

    @property
    def step_ms(self) -> float:
        return 1e3 * float(statistics.median(r["step_s"] for r in self.results))

    @property
    def spread_ms(self) -> float:
        """The interquartile range of the repeats: half the range for three, robust to one outlier for five."""
        steps = [1e3 * r["step_s"] for r in self.results]
        q1, _, q3 = statistics.quantiles(steps, n=4, method="inclusive")
        return float(q3 - q1)

    @property
    def resolved(self) -> bool:
        return len(self.results) >= 2 and self.spread_ms <= MAX_SPREAD * self.step_ms

    @property
    def startup_s(self) -> float | None:
        values = [r["startup_s"] for r in self.results if r["startup_s"] is not None]
        return float(statistics.median(values)) if values else None

    @property
    def peak_mib(self) -> float:
        return float(statistics.median(r["peak_mib"] for r in self.results))

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.spec.kind,
            "optimizer": self.spec.optimizer,
            "flags": list(self.spec.flags),
            "step_ms": self.step_ms,
            "spread_ms": self.spread_ms,
            "resolved": self.resolved,
            "samples_ms": [1e3 * r["step_s"] for r in self.results],
            "startup_s": self.startup_s,
            "peak_mib": self.peak_mib,
        }


def measure(specs: dict[str, Spec], repeats: int, in_process: bool, say: Callable[[str], None]) -> dict[str, Row]:
    """Run every contestant ``repeats`` times, alternating them so that drift in the machine hits all alike, and
    each repeat starting one contestant later than the last, so that no contestant always runs first or last."""
    rows = {name: Row(spec, []) for name, spec in specs.items()}
    runner = run if in_process else run_in_new_process
    order = list(rows.values())
    for repeat in range(repeats):
        began = time.perf_counter()
        first = repeat % len(order)
        for row in order[first:] + order[:first]:
            if not in_process and row.spec.size > 100_000 and row.spec.device == "cpu":
                time.sleep(SETTLE_S)  # the previous process's gigabytes are still being given back to the system
            row.results.append(runner(row.spec))
        size = next(iter(specs.values())).size
        say(f"  {size} points, repeat {repeat + 1}/{repeats}: {time.perf_counter() - began:.0f} s")
    return rows


@dataclass(frozen=True)
class Ratio:
    """``a / b`` of two rows' medians, a result only when both rows are; and the quartiles of the repeats' own
    ratios (``a``'s run over ``b``'s in the same round of repeats), which say how far one process's step can
    drift from another's: a target inside them is within the noise."""

    value: float
    resolved: bool
    paired: tuple[float, float]

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "resolved": self.resolved, "paired_quartiles": list(self.paired)}


def ratio(a: Row, b: Row) -> Ratio:
    paired = [x["step_s"] / y["step_s"] for x, y in zip(a.results, b.results, strict=True)]
    q1, _, q3 = statistics.quantiles(paired, n=4, method="inclusive")
    return Ratio(a.step_ms / b.step_ms, a.resolved and b.resolved, (q1, q3))


def verdict(value: float, limit: float, resolved: bool, paired: tuple[float, float] | None = None) -> bool | None:
    """Met (True) or not (False); None when a row is unresolved, or when the line ``value <= limit`` falls
    between the quartiles of the repeats' own ratios (or between them and ``value``, which may lie outside
    them), so that the verdict would flip with the draw of processes."""
    if not resolved or (paired is not None and min(paired[0], value) <= limit < max(paired[1], value)):
        return None
    return value <= limit


def breakdown(rows: dict[str, Row]) -> dict[str, dict[str, Any]]:
    """What each feature costs per step: litpoly's step minus the step with that feature off, with the noise
    (the mean of the two rows' interquartile ranges): a cost within it is not resolved."""
    full = rows["litpoly/sgd"]
    costs = {}
    for name in FEATURES:
        without = rows[f"without {name.strip()}"]
        cost, noise = full.step_ms - without.step_ms, (full.spread_ms + without.spread_ms) / 2
        costs[name] = {"cost_ms": cost, "noise_ms": noise, "resolved": abs(cost) > noise}
    return costs


def memory_growth(small: dict[str, Row], large: dict[str, Row]) -> dict[str, float]:
    """The memory that grows with the data: peak at the large size minus peak at the small one, per contestant
    (the libraries' own footprint cancels), and litpoly's growth against the raw loop's."""
    raw = large["raw/sgd"].peak_mib - small["raw/sgd"].peak_mib
    litpoly = large["litpoly/sgd"].peak_mib - small["litpoly/sgd"].peak_mib
    return {"raw_growth_mib": raw, "litpoly_growth_mib": litpoly, "ratio": litpoly / raw}


def import_lightning_s(repeats: int) -> float:
    """Median time from starting ``python -c "import lightning"`` to the import's end, in a fresh process (as a
    contestant's start-up is timed up to its first step: the interpreter's exit, which takes a while after
    importing torch, is left out of both)."""
    samples = []
    for _ in range(repeats):
        began = time.time()
        code = "import lightning, time; print(time.time())"
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=600)
        samples.append(float(done.stdout.split()[-1]) - began)
    return statistics.median(samples)
