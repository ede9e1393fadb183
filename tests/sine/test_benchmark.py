"""The benchmark script runs end to end and its JSON is self-consistent (no claims about speed: machines differ)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

CONTESTANTS = {"numpy/sgd", "raw/sgd", "raw/rmsprop", "bare/sgd", "bare/rmsprop", "bare-null/sgd", "bare-null/rmsprop"}
CONTESTANTS |= {"litpoly/sgd", "litpoly/rmsprop"}


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_benchmark_writes_consistent_json(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quick", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"Results written to {out}" in result.stdout
    report = json.loads(out.read_text())

    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["device"] == "cpu"
    startup = report["startup"]
    assert positive(startup["import_lightning_s"]) and positive(startup["train_fit_1_step_s"])
    assert startup["startup_over_import_s"] == pytest.approx(
        startup["train_fit_1_step_s"] - startup["import_lightning_s"]
    )

    assert [r["size"] for r in report["results"]] == [500, 2000]
    for size_result in report["results"]:
        rows = size_result["contestants"]
        assert set(rows) == CONTESTANTS
        for name, row in rows.items():
            assert positive(row["step_ms"]), (name, row)
            assert len(row["step_ms_samples"]) == size_result["repeats"]
            # memory_mib can be legitimately tiny (numpy on 500 points), but it is measured and finite.
            assert math.isfinite(row["memory_mib"]) and row["memory_mib"] >= 0, (name, row)
            raw = rows[f"raw/{row['optimizer']}"]
            # Every ratio is what the JSON's own numbers give.
            assert row["ratio_to_raw"] == pytest.approx(row["step_ms"] / raw["step_ms"], rel=1e-12)
            if raw["memory_mib"] > 0:
                assert row["memory_ratio_to_raw"] == pytest.approx(row["memory_mib"] / raw["memory_mib"], rel=1e-12)
            if row["kind"] == "litpoly":
                bare, bare_null = rows[f"bare/{row['optimizer']}"], rows[f"bare-null/{row['optimizer']}"]
                assert row["ratio_to_bare"] == pytest.approx(row["step_ms"] / bare["step_ms"], rel=1e-12)
                assert row["ratio_to_bare_null"] == pytest.approx(row["step_ms"] / bare_null["step_ms"], rel=1e-12)
                summary = size_result["summary"][row["optimizer"]]
                assert summary == {
                    "litpoly/raw": row["ratio_to_raw"],
                    "litpoly/bare": row["ratio_to_bare"],
                    "litpoly/bare-null": row["ratio_to_bare_null"],
                }
            else:
                assert row["ratio_to_bare"] is None and row["ratio_to_bare_null"] is None
        assert rows["raw/sgd"]["ratio_to_raw"] == 1.0 and rows["raw/rmsprop"]["ratio_to_raw"] == 1.0
    # The breakdown at 2000 points: every part timed, each cost a finite number of milliseconds. (At --quick's
    # 200 steps the start-up noise can exceed the step itself, so no sign is asserted.)
    breakdown = report["breakdown"]
    assert breakdown["size"] == 2000 and math.isfinite(breakdown["full_step_ms"])
    parts = set(breakdown["cost_ms"])
    assert {"progress bar", "validation every 100 steps", "checkpoints (every 500 steps, last)"} <= parts
    assert all(math.isfinite(cost) for cost in breakdown["cost_ms"].values())
    assert "What each part of litpoly's fit costs per step at 2000 points" in result.stdout
    # The table and the summary lines are printed too.
    assert "litpoly/raw" in result.stdout and "start-up over import lightning" in result.stdout
