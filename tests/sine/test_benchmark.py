"""The benchmark runs end to end, and its JSON is consistent with itself (no claims about speed: machines differ)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import REPO


@pytest.fixture
def bench_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make scripts/ importable, as `python scripts/benchmark.py` does."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))


def test_quick_benchmark_writes_consistent_json(
    bench_modules: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    from benchmark import benchmark  # scripts/benchmark.py

    out = tmp_path / "b.json"
    returned = benchmark(quick=True, repeats=2, out=out)
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["machine"]["device"] == "cpu"
    size = report["sizes"]["500"]
    assert size["repeats"] == 2
    rows = size["rows"]
    expected = {f"{kind}/{opt}" for kind in ("raw", "bare", "litpoly") for opt in ("sgd", "rmsprop")}
    assert expected | {"bare-null/sgd"} <= set(rows)
    for name, row in rows.items():
        samples = row["samples_ms"]
        assert len(samples) == 2 and all(math.isfinite(s) and s > 0 for s in samples), name
        assert row["step_ms"] == pytest.approx(sum(samples) / 2)  # the median of two
        assert row["spread_ms"] == pytest.approx((max(samples) - min(samples)) * 0.5)  # the IQR of two
        assert row["resolved"] == (row["spread_ms"] <= 0.1 * row["step_ms"])
    for name, ratio in size["ratios"].items():
        a, b = name.split(" ")[0].split("/")
        optimizer = name.split("(")[1].rstrip(")")
        top, bottom = rows[f"{a}/{optimizer}"], rows[f"{b}/{optimizer}"]
        assert ratio["value"] == pytest.approx(top["step_ms"] / bottom["step_ms"])
        assert ratio["resolved"] == (top["resolved"] and bottom["resolved"])
        # The repeats' own ratios (each run over the other's in the same round of repeats): two of them, so their
        # quartiles are the points a quarter of the way in from each end.
        paired = sorted(x / y for x, y in zip(top["samples_ms"], bottom["samples_ms"], strict=True))
        quarter = (paired[1] - paired[0]) / 4
        assert ratio["paired_quartiles"] == pytest.approx([paired[0] + quarter, paired[1] - quarter])
    assert report["targets"] == []  # the targets are set for 2000 and 20 million points only
    # The breakdown: one cost per feature, the full fit's step minus the step without it.
    for name, cost in size["breakdown"].items():
        without = rows[f"without {name.strip()}"]
        assert cost["cost_ms"] == pytest.approx(rows["litpoly/sgd"]["step_ms"] - without["step_ms"])
    assert "What each default feature of litpoly's fit costs per step" in printed
    assert f"Results written to {out}" in printed


def test_one_contestant_runs_in_a_fresh_process(bench_modules: None) -> None:
    """The real path: a contestant in its own process, its start-up measured from the spawn."""
    from bench.contestants import Spec, run_in_new_process

    result = run_in_new_process(Spec("litpoly", "sgd", 500, "cpu", steps=30, start=5, stop=25))
    assert result["step_s"] > 0 and result["peak_mib"] > 0
    assert 0 < result["startup_s"] < 120  # from the process's start to its first training step


@pytest.mark.parametrize(
    ("value", "resolved", "paired", "met"),
    [
        (1.01, True, (1.00, 1.015), True),  # the quartiles of the repeats' ratios on the right side of the line
        (1.03, True, (1.025, 1.04), False),
        (1.019, True, (1.001, 1.032), None),  # the line between the quartiles: the draw of processes decides
        (1.033, True, (1.001, 1.032), None),
        (1.01, False, (1.00, 1.015), None),  # a row spread over 10% of its median
        (1.10, True, (0.96, 1.015), None),  # the ratio of the medians outside the quartiles, beyond the line
        (0.97, True, None, True),  # a target without repeats' ratios (memory growth)
    ],
)
def test_a_target_is_met_only_when_the_noise_cannot_flip_it(
    bench_modules: None, value: float, resolved: bool, paired: tuple[float, float] | None, met: bool | None
) -> None:
    from bench.measure import verdict

    assert verdict(value, 1.02, resolved, paired) is met


def test_a_target_within_the_noise_says_so_with_its_quartiles(
    bench_modules: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.report import print_targets

    target = {"name": "20M", "limit": 1.02, "value": 1.019, "resolved": True, "paired_quartiles": [1.001, 1.032]}
    print_targets([{**target, "met": None}, {**target, "name": "memory", "value": 0.97, "met": True}])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == [
        "  20M: 1.019 (target ≤ 1.02) — within the noise: the repeats' own ratios span 1.001–1.032",
        "  memory: 0.970 (target ≤ 1.02) — met",
    ]
