"""The sweep's witness: on the example, Optuna's search for SGD's lr lands where a dense grid, computed here with
numpy alone, says the best lr is — just below the stability limit — and every trial above the limit diverges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from helpers import REPO
from litpoly.cli import DEFAULT_CONFIG
from litpoly.sweep import sweep

pytestmark = pytest.mark.slow


def grid_best_lr(init: list[float], lrs: np.ndarray, steps: int = 2400) -> tuple[float, float]:
    """The lr of ``lrs`` whose full-batch SGD run (the seed's summed loss, float64) ends with the lowest sum of
    squares on the held-out midpoints, and SGD's stability limit 2/λmax(2XᵀX) — numpy only, all lrs at once."""
    x = np.linspace(-np.pi, np.pi, 2000)
    vander, target = np.vander(x, 4, increasing=True), np.sin(x)
    mid = (x[:-1] + x[1:]) / 2
    w = np.repeat(np.array(init)[:, None], len(lrs), axis=1)
    with np.errstate(all="ignore"):  # the lrs above the limit overflow
        for _ in range(steps):
            w = w - lrs * (2 * vander.T @ (vander @ w - target[:, None]))
        sse = np.sum((np.vander(mid, 4, increasing=True) @ w - np.sin(mid)[:, None]) ** 2, axis=0)
    limit = 2 / np.linalg.eigvalsh(2 * vander.T @ vander)[-1]
    return float(lrs[np.nanargmin(np.where(np.isfinite(sse), sse, np.nan))]), float(limit)


def test_the_lr_sweep_finds_the_grids_best_lr_below_the_stability_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # configs/sweeps/lr.yaml as shipped (SGD, [1e-7, 1e-5] log scale, 2400 steps, sampler seed 0, 16 trials), without
    # its pruner: a trial above the limit pruned by the median rule would end before it could be seen to diverge.
    space = yaml.safe_load((REPO / "configs" / "sweeps" / "lr.yaml").read_text())
    space["pruner"] = None
    path = tmp_path / "lr.yaml"
    path.write_text(yaml.safe_dump(space))
    monkeypatch.chdir(REPO)  # the space's args name configs/sgd.yaml, relative to the project, as train.py's do
    study = sweep(path, DEFAULT_CONFIG, logs=tmp_path / "lightning_logs")

    trials = study.get_trials()
    first_run = Path(trials[0].user_attrs["run_folder"]) / "hparams.yaml"
    init = yaml.safe_load(first_run.read_text())["init_coefficients"]  # the seeded start every trial shares
    grid_lr, limit = grid_best_lr(init, np.geomspace(1e-7, 1e-5, 200))

    assert 3.5e-6 < limit < 3.6e-6
    assert 0.98 * limit < grid_lr < limit  # the best lr of the grid lies just below the limit
    assert abs(study.best_params["model.lr"] - grid_lr) <= 0.3 * grid_lr
    above = [t for t in trials if t.params["model.lr"] > limit]
    assert above, "the sweep sampled no lr above the limit: nothing shows that those diverge"
    for trial in above:
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert "diverged" in trial.user_attrs["diverged"]
    below = [t for t in trials if t.params["model.lr"] < limit]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in below)
