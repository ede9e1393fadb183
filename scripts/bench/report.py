"""What the benchmark prints, and the JSON it writes."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch


def machine(device: str) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu_model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model or platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": device,
        "load_average_at_start": list(os.getloadavg()),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_rows(size: int, rows: dict[str, dict[str, Any]]) -> None:
    width = max(map(len, rows))
    print(f"\n{size} points: ms per step (median of the repeats, and their interquartile range), start-up, peak memory")
    for name, row in rows.items():
        mark = "" if row["resolved"] else "  UNRESOLVED: the repeats spread by over 10% of the median"
        startup = "" if row["startup_s"] is None else f"  first step at {row['startup_s']:.2f} s"
        print(
            f"  {name:<{width}} {row['step_ms']:9.4f} ms (IQR {row['spread_ms']:.4f})"
            f"{startup}  peak {row['peak_mib']:7.0f} MiB{mark}"
        )


def print_ratios(size: int, ratios: dict[str, dict[str, Any]]) -> None:
    print(f"  ratios at {size} points (and the quartiles of the repeats' own ratios):")
    for name, r in ratios.items():
        low, high = r["paired_quartiles"]
        print(f"    {name} {r['value']:.3f}x ({low:.3f}–{high:.3f}){'' if r['resolved'] else ' unresolved'}")


def print_breakdown(costs: dict[str, dict[str, Any]], bare_ms: float) -> None:
    print(f"\nWhat each default feature of litpoly's fit costs per step (SGD; bare Lightning's step {bare_ms:.4f} ms):")
    width = max(map(len, costs))
    for name, cost in costs.items():
        verdict = "" if cost["resolved"] else "  (within the noise)"
        share = 100 * cost["cost_ms"] / bare_ms
        cost_us, noise_us = 1e3 * cost["cost_ms"], 1e3 * cost["noise_ms"]
        print(f"  {name:<{width}} {cost_us:7.1f} µs ± {noise_us:4.1f}  {share:6.1f}% of bare{verdict}")


def print_targets(targets: list[dict[str, Any]]) -> None:
    print("\nTargets:")
    for target in targets:
        verdict = {True: "met", False: "NOT MET"}.get(target["met"], "unresolved (rerun on an idle machine)")
        paired = target.get("paired_quartiles")
        if target["met"] is None and target["resolved"] and paired:
            verdict = f"within the noise: the repeats' own ratios span {paired[0]:.3f}–{paired[1]:.3f}"
        print(f"  {target['name']}: {target['value']:.3f} (target ≤ {target['limit']}) — {verdict}")


def write_json(path: Path, results: dict[str, Any]) -> None:
    """The results as JSON (the parent folder created): what ``scripts/bench/tables.py`` renders as tables."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
