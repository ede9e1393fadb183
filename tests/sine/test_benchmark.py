"""The benchmark runs end to end, and its JSON is consistent with itself (no claims about speed: machines differ)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from helpers import REPO


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
    returned = benchmark(quick=True, repeats=2, json=out)
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["machine"]["device"] == "cpu"
    assert len(report["machine"]["load_average_at_end"]) == 3  # other work during the run shows in the tables
    size = report["sizes"]["500"]
    assert size["repeats"] == 2
    rows = size["rows"]
    expected = {f"{kind}/{opt}" for kind in ("raw", "bare", "litpoly") for opt in ("sgd", "rmsprop")}
    assert expected | {"bare-null/sgd", "compiled/sgd", "plain/sgd", "plain/rmsprop"} <= set(rows)
    assert rows["compiled/sgd"]["flags"] == ["--compile", "true"]
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
    check_tables(report)


def check_tables(report: dict[str, Any]) -> None:
    """docs/performance.md's tables, rendered from this JSON: every row and figure from it, nothing else moved."""
    from bench.tables import BEGIN, END, render, replace_tables

    tables = render(report)
    rows, ratios = report["sizes"]["500"]["rows"], report["sizes"]["500"]["ratios"]
    assert f"torch {report['machine']['torch']}, Lightning {report['machine']['lightning']}" in tables
    for optimizer in ("sgd", "rmsprop"):
        line = next(line for line in tables.splitlines() if line.startswith(f"| 500 | {optimizer} |"))
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        litpoly = rows[f"litpoly/{optimizer}"]
        assert cells[6].startswith(f"{litpoly['step_ms']:.4g} ms (±{litpoly['spread_ms']:.2g})")
        assert cells[6].endswith("unresolved") != litpoly["resolved"]
        assert cells[7].startswith(f"{ratios[f'litpoly/plain ({optimizer})']['value']:.3f}x")
        assert cells[8].startswith(f"{ratios[f'litpoly/bare ({optimizer})']['value']:.3f}x")
        if optimizer == "rmsprop":
            assert cells[5] == "–"  # bare + NullProfiler: timed with SGD only
    compiled = next(line for line in tables.splitlines() if line.startswith("| 500 | ") and line.count("|") == 5)
    cells = [cell.strip() for cell in compiled.strip("|").split("|")]
    assert cells[2].startswith(f"{rows['compiled/sgd']['step_ms']:.4g} ms")
    assert cells[3].startswith(f"{ratios['compiled/litpoly (sgd)']['value']:.3f}x")
    breakdown = report["sizes"]["500"]["breakdown"]
    costs = [line for line in tables.splitlines() if " µs ± " in line]
    assert len(costs) == len(breakdown)
    for line, cost in zip(costs, breakdown.values(), strict=True):
        assert f"| {1e3 * cost['cost_ms']:.0f} µs ± {1e3 * cost['noise_ms']:.0f}" in line
    document = f"# Performance\n\nbefore\n\n{BEGIN}\nold tables\n{END}\n\nafter\n"
    rendered = replace_tables(document, tables)
    assert rendered == f"# Performance\n\nbefore\n\n{BEGIN}\n{tables}\n{END}\n\nafter\n"
    assert replace_tables(rendered, tables) == rendered  # rendering again changes nothing


def test_the_tables_script_fills_the_docs_markers(bench_modules: None, tmp_path: Path) -> None:
    """`python scripts/bench/tables.py RESULTS DOCUMENT` in a process of its own (standard library only), and the
    performance page has the markers it writes between."""
    from bench.tables import BEGIN, END

    performance = (REPO / "docs" / "performance.md").read_text()
    assert performance.count(BEGIN) == 1 and performance.count(END) == 1
    results = {
        "machine": {"device": "cpu", "cpu_model": "CPU", "cpu_count": 2, "torch": "2.9", "lightning": "2.6",
                    "python": "3.11", "load_average_at_start": [0.5, 0.5, 0.5]},
        "sizes": {"2000": {"repeats": 3, "ratios": {}, "rows": {
            "raw/sgd": {"step_ms": 0.0651, "spread_ms": 0.001, "resolved": True},
            "litpoly/sgd": {"step_ms": 0.7223, "spread_ms": 0.1, "resolved": False}}}},
        "targets": [{"name": "t", "limit": 1.3, "value": 1.28, "resolved": True, "met": True}],
    }  # fmt: skip
    (tmp_path / "b.json").write_text(json.dumps(results))
    (tmp_path / "p.md").write_text(f"text\n{BEGIN}\n{END}\n")
    script = REPO / "scripts" / "bench" / "tables.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "b.json"), str(tmp_path / "p.md")], check=True)
    page = (tmp_path / "p.md").read_text()
    assert "| 2,000 | sgd | 0.0651 ms (±0.001) | – | – | – | 0.7223 ms (±0.1) unresolved | – | – | – |" in page
    assert "| t | ≤ 1.3 | 1.280 | met |" in page
    assert "load average 0.5 at the start." in page  # no end recorded: only the start
    with pytest.raises(ValueError, match="Expected the markers"):
        from bench.tables import replace_tables

        replace_tables("no markers", "tables")


def test_one_contestant_runs_in_a_fresh_process(bench_modules: None) -> None:
    """The real path: a contestant in its own process, its start-up measured from the spawn."""
    from bench.contestants import Spec, run_in_new_process

    result = run_in_new_process(Spec("litpoly", "sgd", 500, "cpu", steps=30, start=5, stop=25))
    assert result["step_s"] > 0 and result["peak_mib"] > 0
    assert 0 < result["startup_s"] < 120  # from the process's start to its first training step


def test_the_raw_loop_asks_for_a_gpu_as_a_script_without_lightning_does(
    bench_modules: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its child process imports Lightning (the other contestants need it), which sets torch's NVML check: the raw
    loop takes it back off, so on a CUDA build of torch without NVIDIA's driver its RMSprop steps search for no
    library, as a plain PyTorch script's do."""
    import os

    from bench.contestants import Spec, run
    from litpoly.compat import NVML_CHECK

    monkeypatch.setenv(NVML_CHECK, "1")  # as `import lightning` leaves it
    assert run(Spec("raw", "rmsprop", 500, "cpu", steps=30, start=5, stop=25))["step_s"] > 0
    assert NVML_CHECK not in os.environ


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


def test_the_performance_page_shows_the_rendering_of_its_json(bench_modules: None) -> None:
    """docs/performance.md's figures are generated, never typed: its tables are docs/benchmark.json rendered."""
    from bench.tables import BEGIN, END, render

    page = (REPO / "docs" / "performance.md").read_text()
    shown = page[page.index(BEGIN) + len(BEGIN) : page.index(END)]
    assert shown == f"\n{render(json.loads((REPO / 'docs' / 'benchmark.json').read_text()))}\n"


def test_a_runs_step_time_is_its_fastest_stretch(bench_modules: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from bench import clock

    # Step ends 200 … 2200 read at these times (s): the stretch 700 → 1200 was slowed by something else.
    times = iter([10.0, 10.5, 11.5, 12.0, 12.6])
    # The clock module's own `time`, not the process's: nothing else in this process reads these times.
    monkeypatch.setattr(clock, "time", SimpleNamespace(perf_counter=lambda: next(times), time=time.time))
    loop = clock.LoopClock(200, 2200, torch.device("cpu"), every=500)
    for t in range(2400):
        loop(t)
    assert loop.per_step_s == pytest.approx(0.5 / 500)  # the fastest stretch (200 → 700, 1200 → 1700)
    whole = clock.LoopClock(200, 2200, torch.device("cpu"))
    times = iter([10.0, 12.6])
    for t in range(2400):
        whole(t)
    assert whole.per_step_s == pytest.approx(2.6 / 2000)  # one stretch: the mean
    with pytest.raises(ValueError, match="must divide"):
        clock.LoopClock(200, 2200, torch.device("cpu"), every=300)
