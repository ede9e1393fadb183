"""Benchmark: what litpoly's ``fit`` costs per training step, and in memory, against the raw loop and bare Lightning.

Each contestant (see ``scripts/bench/contestants.py``) — the seed's raw PyTorch loop, bare Lightning (the example's
model and data), a plain Lightning module of the cubic (what a user would write instead), bare Lightning
with litpoly's ``NullProfiler``, litpoly's ``fit`` with every default feature on, the same with ``--compile true``,
and the same with each feature switched off in turn — runs in a process of its own and reads the clock at step
ends inside the run (steps 200 → 2200 of 2400 at 2000 points, its step the fastest of four stretches of 500 steps,
each with the same validations, logging and checkpoint; 5 → 25 of 30 at 20 million), so start-up is excluded;
start-up is measured apart, from the process's start to its first step, against the same for ``python -c "import
lightning"``. The contestants run in turn, 5 times; every row shows the median and the spread (interquartile
range) of its repeats, and a row whose spread exceeds 10% of its median is marked unresolved and not counted as a
result. Peak memory is each process's own (resident set on the CPU, allocated memory on a GPU); what grows with the
data is its peak at 20 million points minus its peak at 2000.

    python scripts/benchmark.py                           # every size; writes lightning_logs/benchmark.json
    python scripts/benchmark.py --sizes "[2000]"          # the seed's size and the breakdown only
    python scripts/benchmark.py --device cuda             # on a GPU, data resident on it
    python scripts/benchmark.py --quick                   # a smoke run in one process, in seconds (the tests)
    python scripts/bench/tables.py                        # the JSON as docs/performance.md's tables
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import auto_cli

from bench import measure as m
from bench import report
from bench.contestants import quiet, run_child

DEFAULT_SIZES = [2000, 20_000_000]

#: The sizes the targets are set for (the seed's, and one whose step is all arithmetic).
SMALL, LARGE = 2000, 20_000_000


def benchmark(
    sizes: list[int] | None = None,
    repeats: int | None = None,
    device: Literal["cpu", "cuda", "auto"] = "auto",
    json: Path = Path("lightning_logs/benchmark.json"),
    quick: bool = False,
    breakdown: bool = True,
    optimizers: list[Literal["sgd", "rmsprop"]] | None = None,
) -> dict[str, Any]:
    """Time litpoly's training step against the raw loop and bare Lightning, and measure peak memory.

    Args:
        sizes: Numbers of training points, each a full batch. Default: [2000, 20000000] ([500] with --quick).
        repeats: Runs of every contestant, alternated; medians and spreads are reported (at least 2). Default: 5.
        device: cpu, cuda, or auto (cuda when available).
        json: Where to write the results as JSON (the parent folder is created); scripts/bench/tables.py renders
            them as the tables of docs/performance.md.
        quick: A smoke run: 500 points, 80 steps, every contestant in this process; no start-up measurement.
        breakdown: At the smallest size, also time litpoly's fit with each default feature switched off.
        optimizers: The optimizers timed up to 100 000 points (default: both; beyond, SGD only).
    """
    began = time.perf_counter()
    quiet()
    run_on = _checked_device(device, repeats)
    sizes = sorted(sizes or ([500] if quick else DEFAULT_SIZES))
    results: dict[str, Any] = {"machine": report.machine(run_on), "sizes": {}}
    all_rows: dict[int, dict[str, m.Row]] = {}
    for size in sizes:
        window, size_repeats = m.window_for(size, quick), m.repeats_for(size, repeats)
        with_breakdown = breakdown and size == sizes[0] and size <= 100_000
        specs = m.contestants(size, run_on, window, with_breakdown, tuple(optimizers or ("sgd", "rmsprop")))
        all_rows[size] = m.measure(specs, size_repeats, quick, say=lambda line: print(line, flush=True))
        results["sizes"][str(size)] = _size_entry(size, all_rows[size], window, size_repeats)
    targets = _ratio_targets(results, all_rows)
    if not quick and sizes[0] <= 100_000:  # start-up at a size whose data takes no time to build
        targets.append(_startup_target(results, all_rows[sizes[0]], m.repeats_for(sizes[0], repeats)))
    for target in targets:
        paired = tuple(target["paired_quartiles"]) if "paired_quartiles" in target else None
        target["met"] = m.verdict(target["value"], target["limit"], target["resolved"], paired)
    results["targets"] = targets
    results["machine"]["load_average_at_end"] = list(os.getloadavg())  # other work during the run shows here
    report.print_targets(targets)
    report.write_json(json, results)
    print(f"\nResults written to {json} ({time.perf_counter() - began:.0f} s)")
    return results


def _checked_device(device: str, repeats: int | None) -> str:
    """The device to run on (``auto`` resolved); a setting that cannot work is refused in one line."""
    if repeats is not None and repeats < 2:
        raise SystemExit(f"error: Expected `repeats` >= 2 (a spread needs two runs), got {repeats}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: `device` cuda: no CUDA device is available here")
    return device


def _size_entry(size: int, rows: dict[str, m.Row], window: m.Window, repeats: int) -> dict[str, Any]:
    """One size's rows, their ratios and (where measured) the breakdown, printed and as the JSON records them."""
    table = {name: row.as_dict() for name, row in rows.items()}
    ratios = {
        f"{a}/{b} ({opt})": m.ratio(rows[f"{a}/{opt}"], rows[f"{b}/{opt}"]).as_dict()
        for opt in ("sgd", "rmsprop")
        if f"litpoly/{opt}" in rows
        for a, b in (("litpoly", "bare"), ("litpoly", "raw"), ("bare", "raw"))
    }
    if "bare-null/sgd" in rows:
        ratios["litpoly/bare-null (sgd)"] = m.ratio(rows["litpoly/sgd"], rows["bare-null/sgd"]).as_dict()
    ratios |= {
        f"litpoly/plain ({opt})": m.ratio(rows[f"litpoly/{opt}"], rows[f"plain/{opt}"]).as_dict()
        for opt in ("sgd", "rmsprop")
        if f"plain/{opt}" in rows
    }
    if "compiled/sgd" in rows:
        ratios["compiled/litpoly (sgd)"] = m.ratio(rows["compiled/sgd"], rows["litpoly/sgd"]).as_dict()
    entry: dict[str, Any] = {"window": vars(window), "repeats": repeats, "rows": table, "ratios": ratios}
    if "without progress bar" in rows:
        entry["breakdown"] = m.breakdown(rows)
    report.print_rows(size, table)
    report.print_ratios(size, ratios)
    if "breakdown" in entry:
        report.print_breakdown(entry["breakdown"], rows["bare/sgd"].step_ms)
    return entry


def _ratio_targets(results: dict[str, Any], all_rows: dict[int, dict[str, m.Row]]) -> list[dict[str, Any]]:
    """The targets on step time (at the seed's size, and at 20 million points) and on memory growth."""
    targets: list[dict[str, Any]] = []
    if SMALL in all_rows:
        ratios = results["sizes"][str(SMALL)]["ratios"]
        targets.append({"name": "2000 points: litpoly / bare Lightning per step (SGD)", "limit": 1.15,
                        **ratios["litpoly/bare (sgd)"]})  # fmt: skip
        targets.append({"name": "2000 points: litpoly / plain Lightning module per step (SGD)", "limit": 1.3,
                        **ratios["litpoly/plain (sgd)"]})  # fmt: skip
    if LARGE in all_rows:
        value = results["sizes"][str(LARGE)]["ratios"]["litpoly/raw (sgd)"]
        targets.append({"name": "20M points: litpoly / raw loop per step (SGD)", "limit": 1.02, **value})
        if SMALL in all_rows:
            growth = results["memory"] = m.memory_growth(all_rows[SMALL], all_rows[LARGE])
            targets.append({"name": "20M points: memory growth, litpoly / raw", "limit": 1.0,
                            "value": growth["ratio"], "resolved": True})  # fmt: skip
    return targets


def _startup_target(results: dict[str, Any], rows: dict[str, m.Row], repeats: int) -> dict[str, Any]:
    """How long after ``import lightning`` alone litpoly's first step starts, recorded and printed."""
    first_step = rows["litpoly/sgd"].startup_s
    assert first_step is not None
    imported = m.import_lightning_s(repeats)
    results["startup"] = {"import_lightning_s": imported, "first_step_s": first_step,
                          "over_import_s": first_step - imported}  # fmt: skip
    print(f"\nStart-up: litpoly's first step starts {first_step:.2f} s after the process does; "
          f"`import lightning` alone takes {imported:.2f} s (+{first_step - imported:.2f} s)")  # fmt: skip
    return {"name": "start-up: first step after import lightning (s)", "limit": 0.5,
            "value": first_step - imported, "resolved": True}  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":  # one contestant, in this fresh process (bench.contestants)
        run_child(sys.argv[2], sys.argv[3])
    else:
        auto_cli(benchmark, as_positional=False)
