"""Benchmark: what litpoly costs per optimizer step, and in memory, against numpy, raw PyTorch and bare Lightning.

Five contestants train the same cubic on the same points from the same start:

- ``numpy``: the seed's manual-gradient loop (``litpoly.reference.run``, SGD, float64);
- ``raw``: the seed's ``torch.nn`` + optimizer cell (``litpoly.baselines.nn_loop``), SGD and RMSprop;
- ``bare``: ``PolynomialRegressor`` + ``SineDataModule`` under a Trainer with everything optional switched
  off (no logger, progress bar, checkpoint, model summary or validation): Lightning's own floor;
- ``bare-null``: the same, with litpoly's ``NullProfiler`` in place of Lightning's default no-op profiler
  (litpoly uses it too): ``litpoly / bare-null`` is what litpoly's own features cost. Run up to 2 million
  points only: beyond, a few microseconds a step are lost in the noise of a 100 ms step;
- ``litpoly``: litpoly's real ``fit`` command with its defaults (progress bar, TensorBoard, validation every
  100 steps, checkpoints, the parity check), called in-process through ``cli_main`` with stdout sent to
  ``os.devnull``.

Per-step time excludes start-up: each contestant runs N and then 2N steps, timed around the whole call, and
the step costs ``(t(2N) − t(N)) / N``; ``2·t(N) − t(2N)`` is its fixed cost per run. Every repeat runs all
contestants in turn, so drift in the machine's speed hits them alike; the tables give the medians, and mark a
contestant whose repeats disagree by more than 2x (a busy machine: rerun when it is idle).

Learning rates are the seed's (SGD 1e-6, RMSprop 1e-3), except that SGD's is scaled by 2000/size beyond 2000
points: the loss is a sum, so 1e-6 diverges there (and litpoly stops a diverged run).

Peak memory is what one run adds to its process: each contestant runs once in a fresh subprocess (this
script with a hidden ``--memory_probe`` flag), which builds the data, then reads the resident set size before
the run and its peak after (``torch.cuda.max_memory_allocated`` on a GPU).

At the seed's 2000 points it then breaks litpoly's step down: it times ``fit`` again with each of its parts
switched off in turn (TensorBoard, the figure, validation, checkpoints, the bar, the parity check, the console
lines) and prints what each costs per step; and with Lightning's own no-op profiler put back, what litpoly's
``NullProfiler`` saves.

It also times the start-up of ``python scripts/train.py fit`` against ``python -c "import lightning"``::

    python scripts/benchmark.py                                  # about 20 minutes on 2 CPU cores
    python scripts/benchmark.py --sizes "[2000]" --repeats 3 --out /tmp/bench.json
    python scripts/benchmark.py --quick                          # a smoke run (the tests use it)
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import lightning as L
import numpy as np
import torch
from jsonargparse import auto_cli
from torch import Tensor

from litpoly.cli import DEFAULT_SEED, cli_main, quiet_irrelevant_messages
from litpoly.profiler import NullProfiler
from sinefit import PolynomialRegressor, SineDataModule, reference
from sinefit.baselines import nn_loop
from sinefit.model import DEFAULT_LR, Optimizer
from sinefit.parity import ParityCheck

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
VALIDATE_EVERY = 100  # the default config's trainer.val_check_interval
DEFAULT_SIZES = [2000, 200_000, 20_000_000]
QUICK_SIZES = [500, 2000]
MEMORY_PROBE_FLAG = "--memory_probe"
SEED_SIZE = 2000  # the seed's number of points, for which its learning rates were chosen
LABELS = {"sgd": "SGD", "rmsprop": "RMSprop"}
OPTIMIZERS: tuple[Optimizer, ...] = ("sgd", "rmsprop")

Kind = Literal["numpy", "raw", "bare", "bare-null", "litpoly"]

#: Run order within a repeat. numpy has SGD only: the reference's RMSprop is not the seed's.
CONTESTANTS: list[tuple[Kind, Optimizer]] = [
    ("numpy", "sgd"),
    ("raw", "sgd"),
    ("bare", "sgd"),
    ("bare-null", "sgd"),
    ("litpoly", "sgd"),
    ("raw", "rmsprop"),
    ("bare", "rmsprop"),
    ("bare-null", "rmsprop"),
    ("litpoly", "rmsprop"),
]

#: Sizes above this run no ``bare-null``.
BARE_NULL_MAX_SIZE = 2_000_000

#: The breakdown (at the seed's 2000 points, SGD): each entry switches one part of litpoly's default ``fit`` off,
#: and its cost is the step time that saves. The profiler entry goes the other way: it puts Lightning's own
#: no-op profiler back, so its "cost" is negative, what litpoly's NullProfiler saves.
FEATURES: dict[str, tuple[str, ...]] = {
    "nothing (the full fit again: this row is the noise)": (),
    "TensorBoard (logger, scalars, figure)": ("--trainer.logger", "false"),
    "  of which the fit figure": ("--model.figure", "false"),
    "validation every 100 steps": ("--trainer.val_check_interval", str(10**9)),
    "checkpoints (every 500 steps, last)": ("--trainer.enable_checkpointing", "false"),
    "progress bar": ("--trainer.enable_progress_bar", "false"),
    "parity check (numpy replay at the end)": ("--model.parity", "false"),
    "console lines (every 100 steps)": ("--console.every_n_steps", str(10**9)),
    "NullProfiler (negative: what it saves)": ("--trainer.profiler", "lightning.pytorch.profilers.PassThroughProfiler"),
}


@dataclass(frozen=True)
class Problem:
    """The shared data and start: the very points litpoly trains on, in float32, and the seed's coefficients."""

    size: int
    device: torch.device
    x: Tensor
    y: Tensor
    w0: list[float]

    @classmethod
    def build(cls, size: int, device: torch.device) -> Problem:
        x64 = SineDataModule(num_samples=size).train_x
        x, y = x64.float(), SineDataModule.target(x64).float()  # targets in float64, then cast, as litpoly does
        return cls(size, device, x.to(device), y.to(device), seed_start())

    def numpy_data(self) -> tuple[np.ndarray, np.ndarray]:
        """The float32 points in float64, as litpoly's parity check replays them (made per run: numpy's own data)."""
        return self.x.double().cpu().numpy(), self.y.double().cpu().numpy()


def seed_start() -> list[float]:
    """The initial coefficients: the same draw litpoly's default start makes (its RNG is seeded with DEFAULT_SEED)."""
    return torch.randn(4, generator=torch.Generator().manual_seed(DEFAULT_SEED)).tolist()


def learning_rate(optimizer: Optimizer, size: int) -> float:
    """The seed's learning rate for ``optimizer``; SGD's scaled by 2000/size beyond the seed's 2000 points.

    The loss is a *sum* over the points, so its curvature grows with their number: SGD at 1e-6 is stable only
    below ~7000 points (its limit is ~3.56e-6 · 2000/size) and litpoly stops a diverged run. Scaling keeps every
    size at the seed's relative step. RMSprop normalises its step, so 1e-3 suits every size.
    """
    lr = float(DEFAULT_LR[optimizer])
    return lr * SEED_SIZE / size if optimizer == "sgd" and size > SEED_SIZE else lr


def contestant_name(kind: Kind, optimizer: Optimizer) -> str:
    return f"{kind}/{optimizer}"


def make_runner(
    kind: Kind, optimizer: Optimizer, problem: Problem, root: Path, extra: tuple[str, ...] = ()
) -> Callable[[int], None]:
    """A function that trains ``kind`` with ``optimizer`` for a given number of steps, from start-up to the end.

    ``extra``: more ``fit`` flags for litpoly (the breakdown switches features off with them).
    """
    lr = learning_rate(optimizer, problem.size)
    on_gpu = problem.device.type == "cuda"
    p = problem

    def numpy_run(steps: int) -> None:
        reference.run(optimizer, *p.numpy_data(), p.w0, lr, steps, record_every=steps + 1)

    def raw_run(steps: int) -> None:
        nn_loop(optimizer, p.x, p.y, p.w0, lr, steps, record_every=steps + 1)  # ends with .item(): a device sync

    def bare_run(steps: int, profiler: NullProfiler | None = None) -> None:
        trainer = L.Trainer(
            max_steps=steps, accelerator="gpu" if on_gpu else "cpu", devices=1, logger=False,
            enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
            limit_val_batches=0, num_sanity_val_steps=0, profiler=profiler,
        )  # fmt: skip
        model = PolynomialRegressor(optimizer=optimizer, lr=lr, init_coefficients=p.w0, parity=False, figure=False)
        trainer.fit(model, SineDataModule(num_samples=p.size))

    def litpoly_run(steps: int) -> None:
        # A fresh folder per run: without a logger, LightningCLI writes config.yaml straight into it.
        folder = tempfile.mkdtemp(dir=root)
        args = ["fit", "--trainer.max_steps", str(steps), "--model.optimizer", optimizer]
        args += ["--data.num_samples", str(p.size), "--trainer.default_root_dir", folder]
        if lr != DEFAULT_LR[optimizer]:
            args += ["--model.lr", repr(lr)]
        if on_gpu:
            args += ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]
        args += extra
        # The progress bar and the console lines still run; they write to /dev/null. LightningCLI warns when
        # sys.argv holds this script's own flags besides `args`, hence the plain argv.
        with (
            open(os.devnull, "w") as devnull,
            contextlib.redirect_stdout(devnull),
            mock.patch.object(sys, "argv", ["train.py"]),
        ):
            try:
                cli_main(args, default_config=DEFAULT_CONFIG)
            except SystemExit as stop:  # litpoly's exit on a bad setting or a diverged run: a benchmark bug
                raise RuntimeError(f"litpoly {' '.join(args)} exited with status {stop.code}") from None

    def bare_null_run(steps: int) -> None:
        bare_run(steps, NullProfiler())

    runners = {"numpy": numpy_run, "raw": raw_run, "bare": bare_run, "bare-null": bare_null_run, "litpoly": litpoly_run}
    return runners[kind]


def timed(run: Callable[[int], None], steps: int, device: torch.device) -> float:
    """Wall time of ``run(steps)``, start-up included, with the device idle at both ends."""
    gc.collect()  # so that no earlier run's garbage is collected on this run's clock
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def default_steps(size: int) -> int:
    """N per size: enough steps that the step costs dwarf the noise in start-up, few enough for minutes, not hours.

    Measured on 2 CPU cores: a raw step costs ~0.06 ms at 2000 points, ~0.5 ms at 200 000 and ~100 ms at 20
    million, where litpoly's start-up alone takes 7–12 s, give or take 3 s from run to run: N=10 drowns in that.
    N=250 at 200 000 points keeps litpoly's parity check running at N and 2N steps (2N · size ≤ 1e8), as in a
    real run there; N=60 at 20 million keeps it skipped at both.
    """
    if size <= 20_000:
        return 3000  # litpoly's fixed cost per run varies by ±30 ms: ±10 µs a step over N=3000
    if size <= 2_000_000:
        return 250
    return 60


def default_repeats(size: int) -> int:
    return 5 if size <= 2_000_000 else 3


def size_notes(size: int, steps: int, device: torch.device) -> list[str]:
    """What the reader needs to know to read this size's numbers right."""
    notes = []
    parity_limit = int(ParityCheck().max_point_steps)
    if size * steps > parity_limit:
        notes.append(f"litpoly skips its parity check here ({size} points x {steps} steps > {parity_limit:g})")
    every = VALIDATE_EVERY
    if steps % every:
        # t(2N) − t(N) holds the validations of steps N+1 … 2N: per step, that is not exactly one every 100 steps.
        extra = 2 * steps // every - steps // every
        notes.append(
            f"litpoly validates every {every} steps; N={steps} is no multiple of {every}, so its per-step time holds "
            f"{extra} validation(s) per {steps} steps"
        )
    if device.type == "cuda":
        notes.append("numpy is not run on a GPU")
    return notes


def fit_steps_to_parity_limit(size: int, steps: int) -> int:
    """Lower N where litpoly's parity check would run at N steps but be skipped at 2N (t(2N) − t(N) would mix them)."""
    limit = int(ParityCheck().max_point_steps)
    if size * steps <= limit < 2 * size * steps:
        return max(1, limit // (2 * size))
    return steps


def measure_breakdown(problem: Problem, root: Path, steps: int, repeats: int) -> dict[str, Any]:
    """What each part of litpoly's default ``fit`` (SGD) costs per step: the full fit, then with that part off.

    Timed like the contestants ((t(2N) − t(N)) / N, alternated, medians); a cost is the full fit's median step
    minus the median step without that part. The first entry runs the full fit again, so its "cost" shows the
    noise: a part whose cost is within it costs too little to measure here (and may come out negative).
    """
    runners = {"full": make_runner("litpoly", "sgd", problem, root)}
    runners |= {name: make_runner("litpoly", "sgd", problem, root, flags) for name, flags in FEATURES.items()}
    per_step: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(repeats):
        started = time.perf_counter()
        for name, run in runners.items():
            t1, t2 = timed(run, steps, problem.device), timed(run, 2 * steps, problem.device)
            per_step[name].append((t2 - t1) / steps)
        print(f"  breakdown repeat {repeat + 1}/{repeats}: {time.perf_counter() - started:.1f} s", flush=True)
    full = statistics.median(per_step["full"])
    return {
        "size": problem.size,
        "steps": steps,
        "repeats": repeats,
        "full_step_ms": 1e3 * full,
        "cost_ms": {name: 1e3 * (full - statistics.median(samples)) for name, samples in per_step.items()
                    if name != "full"},
    }  # fmt: skip


def print_breakdown(breakdown: dict[str, Any], results: list[dict[str, Any]]) -> None:
    rows = next(r["contestants"] for r in results if r["size"] == breakdown["size"])
    bare = rows["bare/sgd"]["step_ms"]
    print(
        f"\nWhat each part of litpoly's fit costs per step at {breakdown['size']} points, SGD (litpoly's step "
        f"{breakdown['full_step_ms']:.3f} ms; bare Lightning's {bare:.3f} ms):"
    )
    width = max(map(len, breakdown["cost_ms"]))
    for name, cost in breakdown["cost_ms"].items():
        print(f"  {name:<{width}} {1e3 * cost:7.1f} µs  {100 * cost / bare:6.1f}% of bare")


# ----------------------------------------------------------------------------------------------- memory


def _proc_status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where Linux does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_probe(spec: str) -> None:
    """Run one contestant once in this (fresh) process and print the memory the run added, in bytes, as JSON.

    ``spec`` is ``kind/optimizer,size,steps,device``.
    """
    name, size, steps, device_name = spec.split(",")
    kind, optimizer = name.split("/")
    quiet()
    device = torch.device(device_name)
    with tempfile.TemporaryDirectory() as root:

        def run(steps: int) -> None:
            # Every contestant's data counts: bare and litpoly build theirs inside `fit`, so raw and numpy
            # build theirs inside the measured run too (float64 points cast to float32, as litpoly does).
            needs_data = kind in ("raw", "numpy")
            empty = torch.empty(0)
            problem = (
                Problem.build(int(size), device)
                if needs_data
                else Problem(int(size), device, empty, empty, seed_start())
            )
            make_runner(kind, optimizer, problem, Path(root))(steps)  # type: ignore[arg-type]

        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            run(int(steps))
            torch.cuda.synchronize()
            added, method = torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated"
        else:
            before_kib = _proc_status_kib("VmRSS")
            if _reset_peak_rss() and before_kib is not None:
                run(int(steps))
                peak_kib, method = _proc_status_kib("VmHWM"), "VmHWM after resetting it to VmRSS"
            else:
                # ru_maxrss cannot be reset: an earlier peak (the imports) can hide part of the run's.
                before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                run(int(steps))
                peak_kib, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
            added = 1024 * ((peak_kib or 0) - before_kib)
    print(json.dumps({"bytes": added, "method": method}))


def measure_memory(name: str, size: int, steps: int, device: torch.device) -> tuple[float, str]:
    """Peak memory (MiB) that one run of contestant ``name`` adds, measured in a fresh process."""
    spec = f"{name},{size},{steps},{device.type}"
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), MEMORY_PROBE_FLAG, spec],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"memory probe {spec} failed with status {result.returncode}:\n{result.stderr}")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return answer["bytes"] / 2**20, answer["method"]


# ----------------------------------------------------------------------------------------------- start-up


def measure_startup(repeats: int) -> dict[str, float]:
    """Median wall time of ``import lightning`` and of a one-step ``train.py fit``, each in a fresh process."""
    import_cmd = [sys.executable, "-c", "import lightning"]
    samples: dict[str, list[float]] = {"import_lightning_s": [], "train_fit_1_step_s": []}
    with tempfile.TemporaryDirectory() as root:
        fit_cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "fit", "--trainer.max_steps", "1"]
        fit_cmd += ["--trainer.enable_progress_bar", "false", "--model.parity", "false"]
        fit_cmd += ["--trainer.default_root_dir", root]
        for _ in range(repeats):  # alternated, like the step timings
            for key, cmd in (("import_lightning_s", import_cmd), ("train_fit_1_step_s", fit_cmd)):
                start = time.perf_counter()
                subprocess.run(cmd, cwd=root, capture_output=True, check=True, timeout=600)
                samples[key].append(time.perf_counter() - start)
    result = {key: statistics.median(values) for key, values in samples.items()}
    result["startup_over_import_s"] = result["train_fit_1_step_s"] - result["import_lightning_s"]
    return result


# ----------------------------------------------------------------------------------------------- report


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        cpu_model = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")), "",
        )  # fmt: skip
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model or platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": device.type,
        "load_average_at_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def add_ratios(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Fill in each row's ratios to raw PyTorch (same optimizer) and litpoly's to bare; return the summary.

    ``litpoly/bare`` is the issue's measure: litpoly's step against Lightning's floor as Lightning ships it.
    ``litpoly/bare-null`` (where run) leaves out what litpoly's profiler saves: the cost of its features alone.
    """

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    for row in rows.values():
        raw = rows.get(f"raw/{row['optimizer']}", {})
        bare = rows.get(f"bare/{row['optimizer']}", {})
        bare_null = rows.get(f"bare-null/{row['optimizer']}", {})
        is_litpoly = row["kind"] == "litpoly"
        row["ratio_to_raw"] = ratio(row["step_ms"], raw.get("step_ms"))
        row["memory_ratio_to_raw"] = ratio(row["memory_mib"], raw.get("memory_mib"))
        row["ratio_to_bare"] = ratio(row["step_ms"], bare.get("step_ms")) if is_litpoly else None
        row["ratio_to_bare_null"] = ratio(row["step_ms"], bare_null.get("step_ms")) if is_litpoly else None
    return {
        optimizer: {
            "litpoly/raw": rows[f"litpoly/{optimizer}"]["ratio_to_raw"],
            "litpoly/bare": rows[f"litpoly/{optimizer}"]["ratio_to_bare"],
            "litpoly/bare-null": rows[f"litpoly/{optimizer}"]["ratio_to_bare_null"],
        }
        for optimizer in ("sgd", "rmsprop")
        if f"litpoly/{optimizer}" in rows
    }


def _cell(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def is_noisy(samples: list[float]) -> bool:
    """Whether a contestant's per-step samples disagree by more than 2x (or one is not positive): a busy machine."""
    return min(samples) <= 0 or max(samples) > 2 * min(samples)


def print_table(results: list[dict[str, Any]]) -> None:
    columns = [("points", 9), ("contestant", 16), ("ms/step", 9), ("min..max over repeats", 21), ("x raw", 7)]
    columns += [("lit/bare", 8), ("fixed s", 8), ("peak MiB", 9), ("mem x raw", 9)]
    print(" ".join(f"{title:<{width}}" if title == "contestant" else f"{title:>{width}}" for title, width in columns))
    noisy = False
    for result in results:
        for name, row in result["contestants"].items():
            samples = row["step_ms_samples"]
            spread = f"{min(samples):.3g}..{max(samples):.3g}" + ("*" if row["noisy"] else " ")
            noisy = noisy or row["noisy"]
            cells = [
                str(result["size"]),
                name,
                _cell(row["step_ms"], ".4g"),
                spread,
                _cell(row["ratio_to_raw"], ".3g", "x"),
                _cell(row["ratio_to_bare"], ".3g", "x"),
                _cell(row["fixed_s"], ".3f"),
                _cell(row["memory_mib"], ".4g"),
                _cell(row["memory_ratio_to_raw"], ".3g", "x"),
            ]
            print(
                " ".join(
                    f"{cell:<{width}}" if title == "contestant" else f"{cell:>{width}}"
                    for cell, (title, width) in zip(cells, columns, strict=True)
                )
            )
    if noisy:
        print("* the repeats disagree by more than 2x: the machine was busy (see the load averages); rerun when idle")
    print()
    for result in results:
        parts = [
            f"{LABELS[optimizer]} litpoly/raw {_cell(ratios['litpoly/raw'], '.3g', 'x')}"
            f" litpoly/bare {_cell(ratios['litpoly/bare'], '.3g', 'x')}"
            f" litpoly/bare-null {_cell(ratios['litpoly/bare-null'], '.3g', 'x')}"
            for optimizer, ratios in result["summary"].items()
        ]
        print(f"{result['size']} points (N={result['steps']}, {result['repeats']} repeats): " + "; ".join(parts))
        for note in result["notes"]:
            print(f"  note: {note}")


def quiet() -> None:
    """Only the benchmark's own output: no per-run Lightning banners, and no warnings about expected things."""
    quiet_irrelevant_messages()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Short runs log less often than every 50 steps; Lightning says so on each of them.
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging")


# ----------------------------------------------------------------------------------------------- main


def benchmark(
    sizes: list[int] | None = None,
    repeats: int | None = None,
    steps: int | None = None,
    device: Literal["cpu", "cuda", "auto"] = "auto",
    out: Path = Path("lightning_logs/benchmark.json"),
    quick: bool = False,
    startup_repeats: int | None = None,
    breakdown: bool = True,
) -> None:
    """Time litpoly's training step against numpy, raw PyTorch and bare Lightning, and measure peak memory.

    Args:
        sizes: Numbers of training points, each a full batch. Default: [2000, 200000, 20000000]
            (with --quick: [500, 2000]).
        repeats: Repeats per size; the medians are reported. Default: 5, or 3 above 2 million points
            (with --quick: 3).
        steps: N, the shorter of the two run lengths (N and 2N). Default: 3000 up to 20 000 points, 250 up to
            2 million, 60 beyond (with --quick: 200).
        device: cpu, cuda, or auto (cuda when available). On cuda numpy is not run.
        out: Where to write the JSON results (the parent folder is created).
        quick: A smoke run in about a minute: tiny sizes, steps and repeats.
        startup_repeats: Runs of each start-up command; the median is reported. Default: 3 (with --quick: 1).
        breakdown: At 2000 points (when among the sizes), also time litpoly's fit with each of its parts
            switched off in turn, and print what each part costs per step.
    """
    began = time.perf_counter()
    quiet()
    sizes = sizes or (QUICK_SIZES if quick else DEFAULT_SIZES)
    if any(size < 4 for size in sizes):
        raise SystemExit(f"error: Expected every size >= 4 (a cubic needs 4 points), got {sizes}")
    if (steps is not None and steps < 1) or (repeats is not None and repeats < 1):
        raise SystemExit(f"error: Expected --steps and --repeats >= 1, got {steps} and {repeats}")
    wants_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if wants_cuda and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    dev = torch.device("cuda" if wants_cuda else "cpu")
    contestants = [(kind, opt) for kind, opt in CONTESTANTS if not (kind == "numpy" and dev.type == "cuda")]

    machine = machine_info(dev)
    print(
        f"Machine: {machine['cpu_count']} CPUs ({machine['cpu_model']}), torch {machine['torch']} "
        f"({machine['torch_threads']} threads), lightning {machine['lightning']}, numpy {machine['numpy']}, "
        f"python {machine['python']}; device: {machine.get('gpu', dev.type)}; "
        f"load average {', '.join(f'{v:.2f}' for v in machine['load_average_at_start'])}",
        flush=True,
    )

    results: list[dict[str, Any]] = []
    cost_of_parts: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for index, size in enumerate(sizes):
            n = steps or (200 if quick else default_steps(size))
            fitted = fit_steps_to_parity_limit(size, n)
            notes = size_notes(size, fitted, dev)
            if fitted != n:
                notes.insert(0, f"N lowered from {n} to {fitted} so that litpoly's parity check runs at N and 2N")
            n = fitted
            r = repeats or (3 if quick else default_repeats(size))
            problem = Problem.build(size, dev)
            if (lr := learning_rate("sgd", size)) != DEFAULT_LR["sgd"]:
                notes.append(f"SGD lr {lr:.3g} (the seed's {DEFAULT_LR['sgd']:g} x 2000/{size}: 1e-6 diverges here)")
            in_race = [(k, o) for k, o in contestants if k != "bare-null" or size <= BARE_NULL_MAX_SIZE]
            runners = {contestant_name(k, o): make_runner(k, o, problem, root) for k, o in in_race}
            print(f"\n{size} points: N={n} and 2N={2 * n} steps, {r} repeats", flush=True)
            # One-time costs (lazy imports, first allocations) belong to no step: pay them before timing.
            if index == 0 or dev.type == "cuda":
                for run in runners.values():
                    timed(run, 2, dev)
            load: list[float] = []
            per_step: dict[str, list[float]] = {name: [] for name in runners}
            fixed: dict[str, list[float]] = {name: [] for name in runners}
            for repeat in range(r):
                started = time.perf_counter()
                for name, run in runners.items():  # alternated: a, b, c, d, a, b, c, d, …
                    t1, t2 = timed(run, n, dev), timed(run, 2 * n, dev)
                    per_step[name].append((t2 - t1) / n)
                    fixed[name].append(2 * t1 - t2)
                load.append(os.getloadavg()[0])
                print(
                    f"  repeat {repeat + 1}/{r}: {time.perf_counter() - started:.1f} s (load average {load[-1]:.2f})",
                    flush=True,
                )
            rows: dict[str, dict[str, Any]] = {}
            for kind, optimizer in in_race:
                name = contestant_name(kind, optimizer)
                memory_mib, method = measure_memory(name, size, n, dev)
                rows[name] = {
                    "kind": kind,
                    "optimizer": optimizer,
                    "step_ms": 1e3 * statistics.median(per_step[name]),
                    "step_ms_samples": [1e3 * t for t in per_step[name]],
                    "fixed_s": statistics.median(fixed[name]),
                    "noisy": is_noisy(per_step[name]),
                    "memory_mib": memory_mib,
                    "memory_method": method,
                }
            summary = add_ratios(rows)
            results.append(
                {
                    "size": size,
                    "steps": n,
                    "repeats": r,
                    "load_average_per_repeat": load,
                    "notes": notes,
                    "contestants": rows,
                    "summary": summary,
                }
            )
            print(f"  memory probes done ({len(rows)} fresh processes)", flush=True)
            if breakdown and size == SEED_SIZE:
                cost_of_parts = measure_breakdown(problem, root, n, r)

    print("\nStart-up, each in a fresh process:", flush=True)
    startup = measure_startup(startup_repeats or (1 if quick else 3))
    machine["load_average_at_end"] = list(os.getloadavg())

    print()
    print_table(results)
    if cost_of_parts is not None:
        print_breakdown(cost_of_parts, results)
    print(
        f"\nStart-up (median of {startup_repeats or (1 if quick else 3)}): "
        f"python -c 'import lightning' {startup['import_lightning_s']:.2f} s; "
        f"scripts/train.py fit --trainer.max_steps 1 {startup['train_fit_1_step_s']:.2f} s; "
        f"start-up over import lightning {startup['startup_over_import_s']:.2f} s"
    )
    report = {
        "machine": machine,
        "settings": {
            "lr": {str(size): {o: learning_rate(o, size) for o in OPTIMIZERS} for size in sizes},
            "w0": seed_start(),
            "dtype": "float32 (numpy: float64)",
            "per_step": "(t(2N) - t(N)) / N, median over repeats; fixed_s: 2 t(N) - t(2N)",
        },
        "startup": startup,
        "results": results,
        "breakdown": cost_of_parts,
        "total_wall_s": time.perf_counter() - began,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(f"Results written to {out}")
    print(f"Total wall time {report['total_wall_s']:.0f} s")


if __name__ == "__main__":
    # The probe flag is for this script's own subprocesses only, so it stays out of --help.
    if len(sys.argv) == 3 and sys.argv[1] == MEMORY_PROBE_FLAG:
        memory_probe(sys.argv[2])
    else:
        # jsonargparse's booleans take a value (`--quick true`); a bare `--quick` reads as true too.
        argv = sys.argv[1:]
        argv = [
            "--quick=true" if arg == "--quick" and (i + 1 == len(argv) or argv[i + 1].startswith("-")) else arg
            for i, arg in enumerate(argv)
        ]
        auto_cli(benchmark, args=argv, as_positional=False)
