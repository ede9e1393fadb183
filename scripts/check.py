"""Check, on your own model and data, every property the template promises; print and save the table.

    python scripts/check.py                                           # the default config (configs/default.yaml)
    python scripts/check.py --config examples/digits/config.yaml      # any config, with any train.py fit flags
    python scripts/check.py --config my_config.yaml --only determinism,resume --epochs 3

Determinism, exact resume (mid-epoch and at an epoch's end), DDP against one process, gradients against finite
differences, learning on one batch, the checkpoint round trip and the export round trip: each PASS, FAIL or SKIP
with the figure measured and its tolerance, written to lightning_logs/check_N/report.txt and report.json. Exit
status 1 if any property fails, 2 if the check cannot run (one line: ``error: …``). See ``litpoly.check``.
"""

from __future__ import annotations

from pathlib import Path

from litpoly import signals

with signals.starting("the check"):  # Ctrl-C while torch and Lightning load: one line, not a traceback
    from litpoly.check import main
    from litpoly.cli import DEFAULT_CONFIG

if __name__ == "__main__":
    raise SystemExit(main(None, Path(__file__).resolve().parent / "train.py", DEFAULT_CONFIG))
