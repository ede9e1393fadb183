"""The contestants: the same problem — the sine example at a given number of points, from the same start —
trained by the seed's raw loop, by bare Lightning, and by litpoly's ``fit``; each run once by :func:`run`.

- ``raw``: the seed's ``torch.nn`` + optimizer cell (:func:`sinefit.baselines.nn_loop`): data and the powers
  of x built once, on the device.
- ``bare``: ``PolynomialRegressor`` + ``SineDataModule`` under a Trainer with everything optional switched
  off (no logger, progress bar, checkpoint, model summary, validation, nor the example's own reports):
  Lightning's floor for this model.
- ``plain``: what a user would write instead, in plain Lightning (:mod:`bench.plain`): its own cubic module, a
  ``DataLoader`` of the full batch, one ``self.log`` a step, a Trainer with nothing optional.
- ``bare-null``: the same with litpoly's ``NullProfiler``: bare Lightning with litpoly's speed-ups (the
  others replace parts that bare Lightning does not have: logger, bar, checkpoint).
- ``litpoly``: ``scripts/train.py fit`` on the default config, every default feature on (progress bar,
  TensorBoard scalars and the fit figure, validation every 100 steps with its metrics, checkpoints, console
  lines, divergence check, parity check); with ``flags``, one of them switched off, or ``--compile true``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import torch

from bench.clock import LoopClock, StepClock
from bench.plain import PlainCubic, full_batch
from litpoly.cli import DEFAULT_CONFIG, DEFAULT_SEED
from litpoly.cli import run as run_command
from litpoly.compat import NVML_CHECK, quiet_irrelevant_messages
from litpoly.errors import RunError
from litpoly.plugins import NullProfiler
from sinefit import PolynomialRegressor, SineDataModule
from sinefit.baselines import nn_loop
from sinefit.model import DEFAULT_LR

REPO = Path(__file__).resolve().parents[2]
SEED_SIZE = 2000  # the seed's number of points, for which its learning rates were chosen


@dataclass(frozen=True)
class Spec:
    """One run of one contestant.

    Attributes:
        kind: ``raw``, ``plain``, ``bare``, ``bare-null`` or ``litpoly``.
        optimizer: ``sgd`` or ``rmsprop``.
        size: Training points (a full batch each step).
        device: ``cpu`` or ``cuda``.
        steps: Steps the run makes.
        start: The clock starts when this many steps have ended …
        stop: … and stops when this many have.
        flags: ``fit`` flags that switch one of litpoly's features off (the breakdown).
        every: The step time is that of the fastest stretch of this many steps (all of them when ``None``).
        spawned_at: ``time.time()`` just before the process was started (for start-up).
    """

    kind: str
    optimizer: str
    size: int
    device: str
    steps: int
    start: int
    stop: int
    flags: tuple[str, ...] = ()
    every: int | None = None
    spawned_at: float = field(default=0.0, compare=False)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        values = json.loads(text)
        return cls(**{**values, "flags": tuple(values["flags"])})


def learning_rate(optimizer: str, size: int) -> float:
    """The seed's learning rate; SGD's scaled by 2000/size beyond the seed's 2000 points.

    The loss is a *sum* over the points, so its curvature grows with their number: SGD at 1e-6 is stable only
    below ~7000 points, and litpoly stops a diverged run. Scaling keeps every size at the seed's relative step.
    RMSprop normalises its step, so 1e-3 suits every size.
    """
    lr = DEFAULT_LR[optimizer]
    return lr * SEED_SIZE / size if optimizer == "sgd" and size > SEED_SIZE else lr


def seed_start() -> list[float]:
    """The initial coefficients litpoly draws under its default seed: every contestant starts there."""
    return torch.randn(4, generator=torch.Generator().manual_seed(DEFAULT_SEED)).tolist()


def quiet() -> None:
    """Only the benchmark's own output: no per-run Lightning banners, no warnings about expected things."""
    quiet_irrelevant_messages()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging")


def _raw(spec: Spec) -> LoopClock:
    # A plain PyTorch script never imports Lightning, so torch asks the CUDA runtime, not NVML, for a GPU: without
    # this, on a CUDA build of torch without NVIDIA's driver an RMSprop step here would pay the library search that
    # Lightning's variable costs (see litpoly.compat.cuda_check_without_nvml).
    os.environ.pop(NVML_CHECK, None)
    device = torch.device(spec.device)
    x64 = SineDataModule(num_samples=spec.size).train_x
    x, y = x64.float().to(device), torch.sin(x64).float().to(device)  # targets in float64, then cast, as litpoly
    del x64  # as litpoly's data module keeps no float64 copy: the loop's memory is the loop's own
    clock = LoopClock(spec.start, spec.stop, device, spec.every)
    lr = learning_rate(spec.optimizer, spec.size)
    nn_loop(spec.optimizer, x, y, seed_start(), lr, spec.steps, record_every=spec.steps + 1, step_end=clock)  # type: ignore[arg-type]
    return clock


def _bare(spec: Spec) -> StepClock:
    clock = StepClock(spec.start, spec.stop, spec.every)
    trainer = L.Trainer(
        max_steps=spec.steps, accelerator="gpu" if spec.device == "cuda" else "cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[clock], profiler=NullProfiler() if spec.kind == "bare-null" else None,
    )  # fmt: skip
    lr = learning_rate(spec.optimizer, spec.size)
    model = PolynomialRegressor(spec.optimizer, lr, init_coefficients=seed_start(), parity=False, figure=False)  # type: ignore[arg-type]
    trainer.fit(model, SineDataModule(num_samples=spec.size))
    return clock


def _plain(spec: Spec) -> StepClock:
    clock = StepClock(spec.start, spec.stop, spec.every)
    trainer = L.Trainer(
        max_steps=spec.steps, accelerator="gpu" if spec.device == "cuda" else "cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, callbacks=[clock],
    )  # fmt: skip
    x64 = SineDataModule(num_samples=spec.size).train_x
    loader = full_batch(x64.float(), torch.sin(x64).float())
    del x64
    trainer.fit(PlainCubic(spec.optimizer, learning_rate(spec.optimizer, spec.size), seed_start()), loader)
    return clock


def _litpoly(spec: Spec, root: str) -> StepClock:
    args = ["fit", "--model.optimizer", spec.optimizer, "--data.num_samples", str(spec.size)]
    args += ["--trainer.max_steps", str(spec.steps), "--trainer.default_root_dir", root]
    if learning_rate(spec.optimizer, spec.size) != DEFAULT_LR[spec.optimizer]:
        args += ["--model.lr", repr(learning_rate(spec.optimizer, spec.size))]
    if spec.device == "cuda":
        args += ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]
    args += ["--trainer.callbacks+=bench.clock.StepClock", f"--trainer.callbacks.start={spec.start}"]
    args += [f"--trainer.callbacks.stop={spec.stop}", f"--trainer.callbacks.every={spec.every or 'null'}", *spec.flags]
    # LightningCLI warns when sys.argv holds other flags besides `args`, hence the plain argv.
    with mock.patch.object(sys, "argv", ["train.py"]):
        try:
            cli = run_command(args, default_config=DEFAULT_CONFIG)
        except RunError as stop:  # a bad setting or a diverged run: a benchmark bug
            raise RuntimeError(f"litpoly {' '.join(args)} exited with status {stop.exit_code}") from None
    return next(c for c in cli.trainer.callbacks if isinstance(c, StepClock))  # type: ignore[attr-defined]


def run(spec: Spec) -> dict[str, Any]:
    """Run ``spec`` once in this process: seconds per step between the clock's two step ends, seconds from
    ``spec.spawned_at`` to the first step's start, and the process's peak memory (MiB)."""
    quiet()
    if spec.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # The progress bar and the console lines still run; they write to /dev/null.
    with (
        tempfile.TemporaryDirectory() as root,
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
        contextlib.redirect_stderr(devnull),
    ):
        if spec.kind == "raw":
            clock: StepClock | LoopClock = _raw(spec)
        elif spec.kind in ("bare", "bare-null"):
            clock = _bare(spec)
        elif spec.kind == "plain":
            clock = _plain(spec)
        else:
            clock = _litpoly(spec, root)
    if spec.device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux: the whole process's peak, imports included (they cancel in differences)
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert clock.first_step_at is not None
    return {
        "step_s": clock.per_step_s,
        "startup_s": clock.first_step_at - spec.spawned_at if spec.spawned_at else None,
        "peak_mib": peak_mib,
    }


def run_in_new_process(spec: Spec) -> dict[str, Any]:
    """:func:`run` in a fresh Python process (``python scripts/benchmark.py --child SPEC``), as a user starts one."""
    import subprocess

    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        spec = Spec(**{**asdict(spec), "spawned_at": time.time()})
        command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--child", spec.to_json(), str(result)]
        process = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        if process.returncode != 0:
            raise RuntimeError(f"{spec} failed with status {process.returncode}:\n{process.stderr[-3000:]}")
        return json.loads(result.read_text())  # type: ignore[no-any-return]


def run_child(spec_json: str, result_path: str) -> None:
    """The child's side of :func:`run_in_new_process`: run the spec, write its result where the parent reads it."""
    Path(result_path).write_text(json.dumps(run(Spec.from_json(spec_json))))
