"""The check's verdicts: one row per property, printed as a table and written to the report folder."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Status = Literal["PASS", "FAIL", "SKIP"]

HEADER = ("property", "result", "measured", "tolerance", "what was measured")


@dataclass(frozen=True)
class Row:
    """One property's verdict.

    Attributes:
        property: Its name, as ``--only`` takes it.
        status: ``PASS``, ``FAIL`` or ``SKIP``.
        measured: The figure the verdict rests on (``inf`` for values that differ in kind, e.g. a key missing);
            ``None`` when nothing was measured.
        tolerance: What the figure is held to, as text (``0``, ``1e-10``, ``< 0.5``).
        detail: What was compared, or why it was skipped.
    """

    property: str
    status: Status
    measured: float | None
    tolerance: str
    detail: str


def one_line(text: str) -> str:
    """``text`` on one line (a table cell, an error line)."""
    return re.sub(r"\s+", " ", text).strip()


def passes(measured: float, limit: float) -> Status:
    """``PASS`` when ``measured`` is within ``limit`` (a NaN never is)."""
    return "PASS" if measured <= limit else "FAIL"


def figure(value: float | None) -> str:
    """A measured figure as the table shows it.

    Example:
        >>> [figure(v) for v in (0.0, 3.14159e-11, 0.25, math.inf, None)]
        ['0', '3.1e-11', '0.25', 'differs', '-']
    """
    if value is None:
        return "-"
    if math.isinf(value):
        return "differs"
    return "0" if value == 0 else f"{value:.2g}"


def table(rows: list[Row]) -> str:
    """The rows as an aligned text table, a header first."""
    cells = [HEADER, *((r.property, r.status, figure(r.measured), r.tolerance, one_line(r.detail)) for r in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)), line[-1]]) for line in cells
    )


def summary(rows: list[Row]) -> str:
    """One line: what failed, or that nothing did."""
    failed = [r.property for r in rows if r.status == "FAIL"]
    if failed:
        return f"FAIL: {', '.join(failed)}"
    skipped = [r.property for r in rows if r.status == "SKIP"]
    return "PASS" + (f" (skipped: {', '.join(skipped)})" if skipped else "")


def report_folder(logs: Path) -> Path:
    """A new ``logs/check_N`` folder for the next ``N``."""
    numbers = [int(p.name[6:]) for p in logs.glob("check_*") if p.name[6:].isdigit()]
    folder = logs / f"check_{max(numbers, default=-1) + 1}"
    folder.mkdir(parents=True)
    return folder


def write_report(folder: Path, rows: list[Row], heading: str, facts: dict[str, Any]) -> None:
    """``report.txt`` (the table as printed) and ``report.json`` (the rows, and ``facts`` about the check)."""
    (folder / "report.txt").write_text(f"{heading}\n{table(rows)}\n{summary(rows)}\n")
    # JSON has no infinity: a figure that differs in kind is written as null, its row's detail says how.
    entries = [{**asdict(r), "measured": None if r.measured is None or math.isinf(r.measured) else r.measured}
               for r in rows]  # fmt: skip
    (folder / "report.json").write_text(json.dumps({**facts, "rows": entries}, indent=2) + "\n")
