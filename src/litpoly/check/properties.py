"""Each property the template promises, measured on the user's project: one function, one row of the report.

They share the reference run (:class:`Reference`): its model, its Trainer, what :class:`~litpoly.check.runs.Watch`
saw of it, and its ``last.ckpt``. The properties that need runs of their own start them through the
:class:`~litpoly.check.runs.Runner`.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from litpoly.check.measure import Difference, check_gradient, difference, largest, overfit
from litpoly.check.report import Row, Status, passes
from litpoly.check.runs import DROPOUT, NoDropout, Runner, Watch, last_checkpoint
from litpoly.checkpoint_file import read_checkpoint
from litpoly.cli.litcli import LitCLI
from litpoly.console import output_to
from litpoly.data.step_loader import StepLoader
from litpoly.export import export, load_trained

#: Tolerances. Determinism, resume and the checkpoint are exact by design: any difference is a failure.
DDP_TOLERANCE = 1e-10  # float64, relative to the largest weight: only the order of additions may differ
GRADIENT_TOLERANCE = 1e-6  # far above float64's rounding on a smooth loss, far below a wrong gradient's error
LEARNING_RATIO = 0.5  # the loss on the one batch must at least halve

EPOCH_END = "at an epoch's end"

#: What the check's DDP comparison passes to every process: no dropout draws (see NoDropout).
NO_DROPOUT = f"--trainer.callbacks+={NoDropout.__module__}.{NoDropout.__qualname__}"


@dataclass
class Reference:
    """The reference run: what every other run is compared with, and the model the other checks measure."""

    cli: LitCLI
    watch: Watch
    checkpoint: Path
    class_path: str

    @property
    def model(self) -> L.LightningModule:
        model: L.LightningModule = self.cli.model
        return model

    @property
    def steps(self) -> int:
        return int(self.cli.trainer.global_step)

    @property
    def steps_per_epoch(self) -> float:
        """Optimizer steps in one epoch (``inf`` for a loader without a length)."""
        trainer = self.cli.trainer
        return math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)


def training_state(path: Path) -> dict[str, Any]:
    """What an exact resume must reproduce: the weights, the optimizer states and the learning-rate schedules."""
    checkpoint = read_checkpoint(path)
    return {key: checkpoint.get(key) for key in ("state_dict", "optimizer_states", "lr_schedulers")}


def _where(diff: Any) -> str:
    return f" (largest at {diff.where})" if diff else ""


def determinism(runner: Runner, reference: Reference, seed: Any) -> Row:
    runner.fit("second")
    second = last_checkpoint(runner.folder / "second")
    diff = difference(read_checkpoint(reference.checkpoint)["state_dict"], read_checkpoint(second)["state_dict"])
    detail = f"weights after two runs with seed {seed}: max |difference|{_where(diff)}"
    return Row("determinism", "FAIL" if diff else "PASS", diff.value, "0", detail)


def stopping_points(steps: int, per_epoch: float) -> dict[str, int]:
    """Where to interrupt a run of ``steps`` steps: mid-epoch, and on the last batch of an epoch (when there is one
    before the end of the run and an epoch of more than one step).

    Example:
        >>> stopping_points(48, 24), stopping_points(20, 20), stopping_points(2, 1)
        ({"at an epoch's end": 24, 'mid-epoch': 36}, {'mid-epoch': 10}, {"at an epoch's end": 1})
    """
    points = {}
    boundary = 0 if math.isinf(per_epoch) else int(per_epoch) * ((steps - 1) // int(per_epoch))
    if boundary > 0:
        points[EPOCH_END] = boundary
    middle = boundary + (steps - boundary) // 2
    if 0 < middle < steps and (math.isinf(per_epoch) or middle % per_epoch):
        points["mid-epoch"] = middle
    return points


def resume(runner: Runner, reference: Reference, deterministic: bool | None) -> Row:
    points = stopping_points(reference.steps, reference.steps_per_epoch)
    if not points:
        return Row("resume", "SKIP", None, "0", f"a run of {reference.steps} step(s) has no step to stop after")
    full = training_state(reference.checkpoint)
    worst, where, stops = Difference(0.0, ""), "", []
    for kind, stop in points.items():
        name = "epoch-end" if kind == EPOCH_END else "mid-epoch"
        saved = runner.interrupted(f"stopped-{name}", stop)
        stopped_at = read_checkpoint(saved).get("global_step")
        if stopped_at != stop:
            return Row("resume", "FAIL", None, "0", f"asked to stop after step {stop}, the run saved step {stopped_at}")
        runner.fit(f"resumed-{name}", "--ckpt_path", str(saved))
        warning = next((line for line in runner.output if "may not go on exactly" in line), None)
        diff = difference(full, training_state(last_checkpoint(runner.folder / f"resumed-{name}")))
        if diff.value > worst.value:
            said = f" ({warning})" if warning else ""
            worst, where = diff, f"; largest when stopped {kind}, at {diff.where}{said}"
        stops.append(f"{kind} (after step {stop})")
    detail = (f"stopped by Ctrl-C {' and '.join(stops)}, resumed with --ckpt_path: max |difference| from the "
              f"uninterrupted run in weights, optimizer and LR-scheduler state{where}")  # fmt: skip
    if EPOCH_END not in points:
        detail += f"; no epoch ends before step {reference.steps}"
    if "mid-epoch" not in points:
        detail += "; an epoch is one step, with no middle to stop in"
    if worst and deterministic is False:
        detail += "; two uninterrupted runs differ too (determinism)"
    return Row("resume", "FAIL" if worst else "PASS", worst.value, "0", detail)


def _batch_flags(reference: Reference, config: dict[str, Any]) -> tuple[list[str], str] | str:
    """The flags that make one process's batch the two processes' batches together, and how; or why there are none.

    A :class:`~litpoly.data.StepLoader` splits each batch across the processes itself: the same settings. A
    ``DataLoader``'s ``batch_size`` is per process: one process gets twice the data module's ``batch_size``.
    """
    loader = reference.cli.trainer.train_dataloader
    if isinstance(loader, StepLoader):
        return [], "the same batches (StepLoader splits each across the processes)"
    data = config.get("data") or {}
    arguments = data.get("init_args", {}) if isinstance(data, dict) else {}
    per_process = arguments.get("batch_size") if isinstance(arguments, dict) else None
    if not isinstance(per_process, int) or isinstance(per_process, bool):
        return (
            f"the training loader is a {type(loader).__name__}, whose batch is per process, and the data module has "
            "no integer `batch_size` argument to give one process the two processes' batches together"
        )
    how = f"2 processes × batch {per_process} against 1 × {2 * per_process}"
    return ["--data.batch_size", str(2 * per_process)], how


def ddp(runner: Runner, reference: Reference, config: dict[str, Any]) -> Row:
    tolerance = f"{DDP_TOLERANCE:g}"
    flags = _batch_flags(reference, config)
    if isinstance(flags, str):
        return Row("ddp", "SKIP", None, tolerance, flags)
    single, how = flags
    float64 = ["--trainer.precision", "64-true", "--trainer.accelerator", "cpu", NO_DROPOUT]
    watch = Watch()
    one_process = runner.fit("ddp-1-process", *float64, *single, callbacks=[watch])
    loaders = (cli.trainer.train_dataloader for cli in (one_process, reference.cli))
    doubled, per_process = (getattr(loader, "batch_size", None) for loader in loaders)
    if single and (per_process is None or doubled != 2 * per_process):
        return Row("ddp", "SKIP", None, tolerance, "`--data.batch_size` does not set the training loader's batch size")
    if watch.draws:
        return Row("ddp", "SKIP", None, tolerance, "the training step draws random numbers (other than dropout "
                   "layers'): each process draws its own, so 2 processes equal 1 only in distribution")  # fmt: skip
    unfinished = _not_compared(runner.fit_ddp("ddp-2-processes", *float64))
    if unfinished is not None:
        return Row("ddp", unfinished[0], None, tolerance, unfinished[1])
    one, two = (read_checkpoint(last_checkpoint(runner.folder / name)) for name in ("ddp-1-process", "ddp-2-processes"))
    if one.get("global_step") != two.get("global_step"):
        steps = f"{one.get('global_step')} and {two.get('global_step')}"
        return Row("ddp", "FAIL", math.inf, tolerance, f"1 and 2 processes ran {steps} steps")
    diff = difference(one["state_dict"], two["state_dict"])
    relative = diff.value / max(largest(one["state_dict"]), torch.finfo(torch.float64).tiny)
    dropout = any(isinstance(m, DROPOUT) and m.p > 0 for m in reference.model.modules())
    off = "; dropout off in both (each process draws its own masks)" if dropout else ""
    steps = f"{two.get('global_step')} steps"
    detail = f"{how}, float64 on the CPU, {steps}: max |Δ weight| / max |weight|{_where(diff)}{off}"
    return Row("ddp", passes(relative, DDP_TOLERANCE), relative, tolerance, detail)


def _not_compared(result: subprocess.CompletedProcess[str]) -> tuple[Status, str] | None:
    """Why the 2-process run cannot be compared (``SKIP``: the data does not split evenly; ``FAIL``: the run failed)."""
    lines = result.stderr.splitlines()
    note = next((line for line in lines if line.startswith("Note: the")), None)
    if note is not None:  # DistributedSampler repeats samples: another data set than one process's
        return "SKIP", note.removeprefix("Note: ")
    if result.returncode == 0:
        return None
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    if errors and "split evenly" in errors[-1]:  # StepLoader refuses a batch that does not
        return "SKIP", errors[-1]
    why = errors[-1] if errors else (lines[-1] if lines else f"exit status {result.returncode}")
    return "FAIL", f"the 2-process run failed: {why}"


def gradients(reference: Reference) -> Row:
    tolerance = f"{GRADIENT_TOLERANCE:g}"
    if not reference.model.automatic_optimization:
        return Row("gradients", "SKIP", None, tolerance, "manual optimization: the training step steps itself")
    assert reference.watch.initial is not None
    reference.model.load_state_dict(reference.watch.initial)
    try:
        result = check_gradient(reference.model, reference.watch.batch)
    except Exception as error:  # the user's training step, in float64 and outside the Trainer's loop
        why = f"the training step failed in float64: {type(error).__name__}: {error}"
        return Row("gradients", "FAIL", None, tolerance, why)
    detail = (f"autograd against central differences along a random unit direction, float64, first training batch: "
              f"|Δ slope| / ‖∇loss‖ (slope {result.analytic:.3g}, ‖∇loss‖ {result.gradient_norm:.3g})")  # fmt: skip
    return Row("gradients", passes(result.error, GRADIENT_TOLERANCE), result.error, tolerance, detail)


def learning(reference: Reference, steps: int) -> Row:
    tolerance = f"< {LEARNING_RATIO:g}"
    if not reference.model.automatic_optimization:
        return Row("learning", "SKIP", None, tolerance, "manual optimization: the training step steps itself")
    assert reference.watch.initial is not None
    reference.model.load_state_dict(reference.watch.initial)
    try:
        result = overfit(reference.model, reference.watch.batch, steps)
    except Exception as error:  # the user's training step and optimizer, outside the Trainer's loop
        why = f"training on one batch failed: {type(error).__name__}: {error}"
        return Row("learning", "FAIL", None, tolerance, why)
    detail = (f"loss after / before {steps} steps of {result.optimizer} (lr {result.lr:g}) on the first training "
              f"batch, from the initial weights: {result.first:.4g} → {result.last:.4g}")  # fmt: skip
    if not result.first > 0:  # a ratio of losses says how far a positive loss fell, not a negative one
        return Row("learning", "SKIP", None, tolerance, f"{detail}: the first loss is not positive")
    status: Status = "PASS" if result.ratio < LEARNING_RATIO else "FAIL"
    return Row("learning", status, result.ratio, tolerance, detail)


def _outputs(model: L.LightningModule, batch: Any) -> Any:
    with torch.no_grad():
        return model.predict_step(batch, 0)


def checkpoint(reference: Reference) -> Row:
    fresh = load_trained(reference.checkpoint, reference.class_path).to(reference.model.device)
    trained = reference.model.eval()
    what = "predict_step on the first training batch"
    try:
        expected, got = _outputs(trained, reference.watch.batch), _outputs(fresh, reference.watch.batch)
    except Exception as error:  # predict_step may not take a training batch: the forward on the example input does
        example = trained.example_input_array
        if not isinstance(example, Tensor):
            return Row("checkpoint", "SKIP", None, "0", f"predict_step fails on a training batch ({error}) and the "
                       "model sets no example_input_array to run forward on")  # fmt: skip
        example = example.to(reference.model.device)
        with torch.no_grad():
            expected, got = trained(example), fresh(example)
        what = "forward on example_input_array"
    diff = difference(expected, got)
    detail = (f"last.ckpt read weights-only into a new {type(fresh).__name__} built from its hyperparameters, "
              f"against the trained model: {what}, max |difference|{_where(diff)}")  # fmt: skip
    return Row("checkpoint", "FAIL" if diff else "PASS", diff.value, "0", detail)


def export_round_trip(runner: Runner, reference: Reference) -> Row:
    example = reference.model.example_input_array
    if not isinstance(example, Tensor):
        return Row("export", "SKIP", None, "-", "the model sets no example_input_array (an input of the right shape, "
                   "which export traces the model on)")  # fmt: skip
    tolerance, skipped = "-", ""
    try:
        with output_to(runner.log):
            model = load_trained(reference.checkpoint, reference.class_path)
            dtype = next(model.parameters()).dtype
            with torch.no_grad():
                scale = float(model(example.to(dtype)).abs().max())
            limit = 100 * torch.finfo(dtype).eps * max(1.0, scale)  # rounding in another runtime's kernels
            tolerance = f"{limit:.2g}"
            try:
                written = export(reference.checkpoint, reference.class_path, runner.folder / "export")
            except ValueError as error:
                if "export extra" not in str(error):
                    raise
                written = export(reference.checkpoint, reference.class_path, runner.folder / "export", onnx=False)
                skipped = "; ONNX not checked (the export extra is not installed)"
    except Exception as error:  # the model does not export: that is the finding
        return Row("export", "FAIL", None, tolerance, f"export failed: {type(error).__name__}: {error}".split("\n")[0])
    diffs = {"ONNX (onnxruntime)": written.onnx_max_diff, "torch.export": written.program_max_diff}
    measured = {name: d for name, d in diffs.items() if d is not None}
    worst = max(measured.values())
    detail = (f"{' and '.join(measured)} against the model on example_input_array: max |difference| "
              f"(tolerance 100 ε × max(1, max |output|)){skipped}")  # fmt: skip
    return Row("export", passes(worst, limit), worst, tolerance, detail)
