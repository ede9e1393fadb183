"""List the runs under lightning_logs/: folder, model, steps, best score, status — without opening TensorBoard.

    python scripts/runs.py                          # the working folder's lightning_logs/
    python scripts/runs.py --logs path/to/lightning_logs

A run is ``done`` when its newest checkpoint finished the schedule its config sets (``max_steps``, ``max_epochs``),
``stopped at step N`` otherwise (interrupted, preempted, still running, or stopped early): ``--ckpt_path last`` with
the same settings goes on from there. The best score is that of its ``best.ckpt`` (``--best.monitor``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import auto_cli

from litpoly.runs import LOGS, summarize_runs


def main(logs: Path = Path(LOGS)) -> None:
    """List the runs under ``logs``, oldest first.

    Args:
        logs: The folder that holds the run folders.
    """
    if not logs.is_dir():
        print(f"error: `logs` {logs} is not a folder (run this where scripts/train.py wrote lightning_logs/)",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    rows = [("run", "model", "step", "best", "status")]
    for run in summarize_runs(logs):
        step = "-" if run.step is None else str(run.step)
        rows.append((run.folder.name, run.model, step, run.best or "-", run.status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    auto_cli(main, as_positional=False)
