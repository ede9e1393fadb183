"""The benchmark's JSON as Markdown tables, written into ``docs/performance.md`` between its markers.

Measured numbers drift with the machine, the load on it and the torch version, so the docs never hold them by
hand: this renders the file ``scripts/benchmark.py --json PATH`` wrote, and replaces whatever lies between
``<!-- bench:begin -->`` and ``<!-- bench:end -->``::

    python scripts/benchmark.py --json lightning_logs/benchmark.json
    python scripts/bench/tables.py lightning_logs/benchmark.json docs/performance.md

It imports nothing but the standard library, so it runs without torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

#: The columns of a size's table: the row-name prefix in the JSON, and the heading.
KINDS = (
    ("raw", "raw PyTorch"),
    ("plain", "plain Lightning"),
    ("bare", "bare Lightning"),
    ("bare-null", "bare + NullProfiler"),
    ("litpoly", "litpoly"),
)


def _ms(row: dict[str, Any] | None) -> str:
    """A row's median step with its interquartile range; an unresolved row says so."""
    if row is None:
        return "–"
    text = f"{row['step_ms']:.4g} ms (±{row['spread_ms']:.2g})"
    return text if row["resolved"] else f"{text} unresolved"


def _ratio(ratio: dict[str, Any] | None) -> str:
    if ratio is None:
        return "–"
    low, high = ratio["paired_quartiles"]
    text = f"{ratio['value']:.3f}x ({low:.3f}–{high:.3f})"
    return text if ratio["resolved"] else f"{text} unresolved"


def machine_line(machine: dict[str, Any]) -> str:
    """What the tables were measured on: they hold for that machine and those versions only."""
    where = machine.get("gpu") or f"{machine['cpu_model']} ({machine['cpu_count']} cores)"
    return (
        f"Measured on {machine['device']}: {where}; torch {machine['torch']}, Lightning {machine['lightning']}, "
        f"Python {machine['python']}; load average {_load(machine)}."
    )


def _load(machine: dict[str, Any]) -> str:
    """The 1-minute load average at the start, and at the end where recorded: work besides the benchmark's own."""
    start = f"{machine['load_average_at_start'][0]:.1f} at the start"
    end = machine.get("load_average_at_end")
    return start if end is None else f"{start}, {end[0]:.1f} at the end"


def step_table(sizes: dict[str, Any]) -> list[str]:
    """One row per size and optimizer: each contestant's step, and litpoly's ratios to bare Lightning and raw."""
    lines = [
        "| points | optimizer | "
        + " | ".join(name for _, name in KINDS)
        + " | litpoly / plain | litpoly / bare | litpoly / raw |",
        "|---|---|" + "---|" * (len(KINDS) + 3),
    ]
    for size, entry in sorted(sizes.items(), key=lambda item: int(item[0])):
        rows, ratios = entry["rows"], entry["ratios"]
        for optimizer in ("sgd", "rmsprop"):
            if f"litpoly/{optimizer}" not in rows:
                continue
            cells = [_ms(rows.get(f"{kind}/{optimizer}")) for kind, _ in KINDS]
            cells += [
                _ratio(ratios.get(f"litpoly/plain ({optimizer})")),
                _ratio(ratios.get(f"litpoly/bare ({optimizer})")),
                _ratio(ratios.get(f"litpoly/raw ({optimizer})")),
            ]
            lines.append(f"| {int(size):,} | {optimizer} | " + " | ".join(cells) + " |")
    return lines


def compile_table(sizes: dict[str, Any]) -> list[str]:
    """litpoly's step with ``--compile true`` against without, at each size it was measured at (SGD)."""
    lines = [
        "With `--compile true` (torch.compile of the model's forward; compiling falls before the timed steps):",
        "",
        "| points | litpoly | litpoly --compile | compiled / litpoly |",
        "|---|---|---|---|",
    ]
    for size, entry in sorted(sizes.items(), key=lambda item: int(item[0])):
        rows, ratios = entry["rows"], entry["ratios"]
        if "compiled/sgd" in rows:
            cells = [
                _ms(rows.get("litpoly/sgd")),
                _ms(rows["compiled/sgd"]),
                _ratio(ratios.get("compiled/litpoly (sgd)")),
            ]
            lines.append(f"| {int(size):,} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 4 else []


def breakdown_table(sizes: dict[str, Any]) -> list[str]:
    """What each default feature costs per step, at the size the breakdown was measured at (if any)."""
    measured = [(size, entry) for size, entry in sizes.items() if "breakdown" in entry]
    if not measured:
        return []
    size, entry = measured[0]
    bare_ms = entry["rows"]["bare/sgd"]["step_ms"]
    lines = [
        f"What each default feature of `fit` costs per step at {int(size):,} points (SGD): the step time saved by "
        f"switching it off, against bare Lightning's {bare_ms:.4g} ms step (± the mean of the two rows' ranges):",
        "",
        "| switched off | cost per step | of bare |",
        "|---|---|---|",
    ]
    for name, cost in entry["breakdown"].items():
        noise = "" if cost["resolved"] else " (within the noise)"
        cost_us, noise_us = 1e3 * cost["cost_ms"], 1e3 * cost["noise_ms"]
        label = f"… {name.strip()}" if name.startswith(" ") else name  # a part of the row above
        lines.append(f"| {label} | {cost_us:.0f} µs ± {noise_us:.0f}{noise} | {100 * cost['cost_ms'] / bare_ms:.0f}% |")
    return lines


def target_table(targets: list[dict[str, Any]]) -> list[str]:
    """Each target with its line, the measured value and the verdict (met, not met, or within the noise)."""
    if not targets:
        return []
    lines = ["| target | limit | measured | verdict |", "|---|---|---|---|"]
    for target in targets:
        verdict = {True: "met", False: "**not met**"}.get(target["met"], "unresolved")
        paired = target.get("paired_quartiles")
        if target["met"] is None and target["resolved"] and paired:
            verdict = f"within the noise ({paired[0]:.3f}–{paired[1]:.3f})"
        lines.append(f"| {target['name']} | ≤ {target['limit']} | {target['value']:.3f} | {verdict} |")
    return lines


def render(results: dict[str, Any]) -> str:
    """The whole generated part: the machine, the step table, the breakdown and the targets."""
    repeats = sorted({entry["repeats"] for entry in results["sizes"].values()})
    heading = (
        f"Step times (median of {' or '.join(map(str, repeats))} repeats, ± their interquartile range; in brackets, "
        "the quartiles of the repeats' own ratios):"
    )
    parts = [
        [machine_line(results["machine"])],
        [heading],
        step_table(results["sizes"]),
        compile_table(results["sizes"]),
        breakdown_table(results["sizes"]),
        target_table(results.get("targets", [])),
    ]
    return "\n\n".join("\n".join(part) for part in parts if part)


def replace_tables(document: str, tables: str) -> str:
    """``document`` with the text between the markers replaced by ``tables``."""
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"Expected the markers {BEGIN} and {END}, in that order, in the document")
    return f"{document[: start + len(BEGIN)]}\n{tables}\n{document[end:]}"


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=Path("lightning_logs/benchmark.json"))
    parser.add_argument("document", nargs="?", type=Path, default=Path(__file__).parents[2] / "docs/performance.md")
    options = parser.parse_args(args)
    tables = render(json.loads(options.results.read_text()))
    options.document.write_text(replace_tables(options.document.read_text(), tables))
    print(f"{options.document}: tables rendered from {options.results}")


if __name__ == "__main__":
    main()
