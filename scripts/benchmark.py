"""Benchmark: what litpoly's ``fit`` costs per training step, and in memory, against the raw loop and bare Lightning.

Each contestant (see ``scripts/bench/contestants.py``) — the seed's raw PyTorch loop, bare Lightning, bare
Lightning with litpoly's ``NullProfiler``, litpoly's ``fit`` with every default feature on, and the same with
each feature switched off in turn — runs in a process of its own and reads the clock at two step ends
inside the run (steps 200 → 2200 of 2400 at 2000 points; 5 → 25 of 30 at 20 million), so start-up is
excluded; start-up is measured apart, from the process's start to its first step, against the same for
``python -c "import lightning"``. The contestants run in turn, 3 times (5 at 20 million points, where a step's
time varies more from one process to the next); every row shows the median and the spread (interquartile
range) of its repeats, and a row whose spread exceeds 10% of its median is marked unresolved and not
counted as a result. Peak memory is each process's own (resident set on the CPU,
allocated memory on a GPU); what grows with the data is its peak at 20 million points minus its peak at 2000.

    python scripts/benchmark.py                           # about ten minutes on 2 CPU cores
    python scripts/benchmark.py --sizes "[2000]"          # the seed's size and the breakdown only
    python scripts/benchmark.py --device cuda             # on a GPU, data resident on it
    python scripts/benchmark.py --quick                   # a smoke run in one process, in seconds (the tests)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import auto_cli

from bench import measure as m
from bench import report
from bench.contestants import Spec, quiet, run

DEFAULT_SIZES = [2000, 20_000_000]


def benchmark(
    sizes: list[int] | None = None,
    repeats: int | None = None,
    device: Literal["cpu", "cuda", "auto"] = "auto",
    out: Path = Path("lightning_logs/benchmark.json"),
    quick: bool = False,
    breakdown: bool = True,
    optimizers: list[Literal["sgd", "rmsprop"]] | None = None,
) -> dict[str, Any]:
    """Time litpoly's training step against the raw loop and bare Lightning, and measure peak memory.

    Args:
        sizes: Numbers of training points, each a full batch. Default: [2000, 20000000] ([500] with --quick).
        repeats: Runs of every contestant, alternated; medians and spreads are reported (at least 2). Default:
            3 up to 100 000 points, 5 beyond.
        device: cpu, cuda, or auto (cuda when available).
        out: Where to write the JSON results (the parent folder is created).
        quick: A smoke run: 500 points, 80 steps, every contestant in this process; no start-up measurement.
        breakdown: At the smallest size, also time litpoly's fit with each default feature switched off.
        optimizers: The optimizers timed up to 100 000 points (default: both; beyond, SGD only).
    """
    began = time.perf_counter()
    quiet()
    if repeats is not None and repeats < 2:
        raise SystemExit(f"error: Expected `repeats` >= 2 (a spread needs two runs), got {repeats}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: `device` cuda: no CUDA device is available here")
    sizes = sorted(sizes or ([500] if quick else DEFAULT_SIZES))
    results: dict[str, Any] = {"machine": report.machine(device), "sizes": {}}
    all_rows: dict[int, dict[str, m.Row]] = {}
    for size in sizes:
        window = m.window_for(size, quick)
        with_breakdown = breakdown and size == sizes[0] and size <= 100_000
        specs = m.contestants(size, device, window, with_breakdown, tuple(optimizers or ("sgd", "rmsprop")))
        size_repeats = m.repeats_for(size, repeats)
        rows = all_rows[size] = m.measure(specs, size_repeats, quick, say=lambda line: print(line, flush=True))
        table = {name: row.as_dict() for name, row in rows.items()}
        ratios = {
            f"{a}/{b} ({opt})": m.ratio(rows[f"{a}/{opt}"], rows[f"{b}/{opt}"]).as_dict()
            for opt in ("sgd", "rmsprop")
            if f"litpoly/{opt}" in rows
            for a, b in (("litpoly", "bare"), ("litpoly", "raw"), ("bare", "raw"))
        }
        if "bare-null/sgd" in rows:
            ratios["litpoly/bare-null (sgd)"] = m.ratio(rows["litpoly/sgd"], rows["bare-null/sgd"]).as_dict()
        entry: dict[str, Any] = {"window": vars(window), "repeats": size_repeats, "rows": table, "ratios": ratios}
        if "without progress bar" in rows:
            entry["breakdown"] = m.breakdown(rows)
        results["sizes"][str(size)] = entry
        report.print_rows(size, table)
        report.print_ratios(size, ratios)
        if "breakdown" in entry:
            report.print_breakdown(entry["breakdown"], rows["bare/sgd"].step_ms)

    targets = []
    if 2000 in all_rows:
        value = results["sizes"]["2000"]["ratios"]["litpoly/bare (sgd)"]
        targets.append({"name": "2000 points: litpoly / bare Lightning per step (SGD)", "limit": 1.3, **value})
    if 20_000_000 in all_rows:
        value = results["sizes"]["20000000"]["ratios"]["litpoly/raw (sgd)"]
        targets.append({"name": "20M points: litpoly / raw loop per step (SGD)", "limit": 1.02, **value})
        if 2000 in all_rows:
            growth = results["memory"] = m.memory_growth(all_rows[2000], all_rows[20_000_000])
            targets.append({"name": "20M points: memory growth, litpoly / raw", "limit": 1.0,
                            "value": growth["ratio"], "resolved": True})  # fmt: skip
    if not quick and sizes[0] <= 100_000:  # start-up at a size whose data takes no time to build
        first_step = all_rows[sizes[0]]["litpoly/sgd"].startup_s
        assert first_step is not None
        imported = m.import_lightning_s(m.repeats_for(sizes[0], repeats))
        results["startup"] = {"import_lightning_s": imported, "first_step_s": first_step,
                              "over_import_s": first_step - imported}  # fmt: skip
        print(f"\nStart-up: litpoly's first step starts {first_step:.2f} s after the process does; "
              f"`import lightning` alone takes {imported:.2f} s (+{first_step - imported:.2f} s)")  # fmt: skip
        targets.append({"name": "start-up: first step after import lightning (s)", "limit": 0.5,
                        "value": first_step - imported, "resolved": True})  # fmt: skip
    for target in targets:
        paired = tuple(target["paired_quartiles"]) if "paired_quartiles" in target else None
        target["met"] = m.verdict(target["value"], target["limit"], target["resolved"], paired)
    results["targets"] = targets
    report.print_targets(targets)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nResults written to {out} ({time.perf_counter() - began:.0f} s)")
    return results


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":  # one contestant, in this fresh process (bench.contestants)
        Path(sys.argv[3]).write_text(json.dumps(run(Spec.from_json(sys.argv[2]))))
    else:
        auto_cli(benchmark, as_positional=False)
