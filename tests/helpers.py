"""What the tests share: the problems the run layer is tested on, and ways to run and read runs like a user.

``PROBLEMS`` holds the sine example (the project's default config), the two-moons classifier
(``examples/twomoons/``, its own config) and the digits read from files by DataLoader workers
(``examples/digits/``); the run layer's tests are parametrized over all three (the ``problem`` fixture of
``conftest.py``). Test modules import from here, never from ``conftest.py`` or from one another.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensorboard.backend.event_processing import plugin_event_accumulator
from torch.utils.data import DataLoader

import preloaded
from litpoly.cli.litcli import LitCLI

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
EXAMPLES = REPO / "examples"
TRAIN = REPO / "scripts" / "train.py"
DIGITS_DATA = Path(tempfile.gettempdir()) / "litpoly-tests" / "digits"

RunCLI = Callable[..., LitCLI]


Witness = Callable[[dict[str, torch.Tensor], np.ndarray, np.ndarray], dict[str, float]]


@dataclass(frozen=True)
class Problem:
    """A problem the run layer is tested on: how to pick it, and what the generic tests need to know of it.

    To test the run layer on your own problem, add one of these to ``PROBLEMS``.

    Attributes:
        name: Its name in test ids.
        select: The flags that pick its model and data (none for the default config).
        quick: A short run (seconds), validations and console lines included, all steps in one epoch or more.
        steps: How many optimizer steps ``quick`` makes.
        long: A run long enough to be interrupted mid-way (a few seconds), and ``long_steps`` its steps.
        minibatches: Flags that make it train on several mini-batches an epoch (none if it already does).
        reshape: A model setting, a value for it that changes the weights' shapes, and the first weight
            (by name) whose shape it changes.
        survives: A model setting and a value for it that leaves every weight's shape as it is.
        witness: Its validation metrics (names without ``val/``) computed with numpy alone, from a
            checkpoint's state dict and the held-out inputs and targets.
        per_process: Flags that make a DDP run's batches equal the one-process run's: a ``DataLoader``'s
            ``batch_size`` is per process, so N processes of batch B equal one of batch N·B (none for
            ``StepLoader``, which splits each batch across the processes itself).
        draws_nothing: Flags that make the training step draw no random numbers (dropout): each process draws its
            own, so a run with random draws equals one process's only in distribution.
    """

    name: str
    select: tuple[str, ...]
    quick: tuple[str, ...]
    steps: int
    long: tuple[str, ...]
    long_steps: int
    minibatches: tuple[str, ...]
    reshape: tuple[str, str, str]
    survives: tuple[str, str]
    witness: Witness
    per_process: tuple[str, ...] = ()
    draws_nothing: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name


def sine_metrics(state: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    err = np.polynomial.polynomial.polyval(x, state["coefficients"].double().numpy()) - y
    return {
        "sse": float(np.sum(err**2)),
        "mse": float(np.mean(err**2)),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1 - np.sum(err**2) / np.sum((y - y.mean()) ** 2)),
    }


def digits_metrics(state: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    w = {k: v.double().numpy() for k, v in state.items()}
    hidden = np.maximum(x.reshape(len(x), -1) @ w["net.1.weight"].T + w["net.1.bias"], 0.0)  # dropout is off
    logits = hidden @ w["net.4.weight"].T + w["net.4.bias"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    labels = y.astype(np.int64)
    loss = -np.mean(log_probabilities[np.arange(len(labels)), labels])  # cross-entropy
    return {"loss": float(loss), "acc": float(np.mean(logits.argmax(axis=1) == labels))}


def twomoons_metrics(state: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    w = {k: v.double().numpy() for k, v in state.items()}
    hidden = np.tanh(np.tanh(x @ w["net.0.weight"].T + w["net.0.bias"]) @ w["net.2.weight"].T + w["net.2.bias"])
    logits = (hidden @ w["net.4.weight"].T + w["net.4.bias"])[:, 0]
    loss = np.mean(np.logaddexp(0.0, logits) - y * logits)  # binary cross-entropy of the logits
    return {"loss": float(loss), "acc": float(np.mean((logits > 0) == (y == 1)))}


# fmt: off
SINE = Problem(
    "sine",
    select=(),
    quick=("--trainer.max_steps", "30", "--trainer.val_check_interval", "10",
           "--console.every_n_steps", "10", "--trainer.log_every_n_steps", "10"),
    steps=30,
    long=("--model.optimizer", "rmsprop", "--model.parity", "false"),  # 2400 full-batch steps
    long_steps=2400,
    minibatches=("--data.batch_size", "500"),
    reshape=("degree", "5", "coefficients"),
    survives=("optimizer", "rmsprop"),
    witness=sine_metrics,
)
TWOMOONS = Problem(
    "twomoons",
    select=("--config", str(EXAMPLES / "twomoons" / "config.yaml")),
    quick=("--trainer.max_epochs", "3", "--console.every_n_steps", "7", "--trainer.log_every_n_steps", "7"),
    steps=21,  # 800 training points in batches of 128: 7 steps an epoch
    long=("--trainer.max_epochs", "60", "--trainer.enable_model_summary", "false"),
    long_steps=420,
    minibatches=(),
    reshape=("hidden", "64", "net.0.bias"),
    survives=("lr", "0.5"),
    witness=twomoons_metrics,
)
DIGITS = Problem(
    "digits",
    # The digits' files, written once for the whole session (atomically: the test processes share them).
    select=("--config", str(EXAMPLES / "digits" / "config.yaml"), "--data.data_dir", str(DIGITS_DATA)),
    quick=("--trainer.max_epochs", "2", "--trainer.limit_train_batches", "8", "--console.every_n_steps", "8",
           "--trainer.log_every_n_steps", "8"),
    steps=16,  # 1500 training images in batches of 64 (24 steps an epoch), 8 of them an epoch here
    long=("--trainer.max_epochs", "6", "--trainer.enable_model_summary", "false"),
    long_steps=144,
    minibatches=(),
    reshape=("hidden", "32", "net.1.bias"),
    survives=("lr", "0.5"),
    witness=digits_metrics,
    per_process=("--data.batch_size", "32"),  # on each of 2 processes: the 64 of one process
    draws_nothing=("--model.dropout", "0"),
)
# fmt: on
PROBLEMS = [SINE, TWOMOONS, DIGITS]


def subprocess_env() -> dict[str, str]:
    """The environment of a training process started by a test: unbuffered output, and ``tests/`` importable (the
    unreproducible projects of ``unreproducible.py``; the examples are installed packages)."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def train_command(subcommand: str, *args: str) -> list[str]:
    """``python scripts/train.py SUBCOMMAND …`` without a progress bar."""
    return [sys.executable, str(TRAIN), subcommand, "--trainer.enable_progress_bar", "false", *args]


def run_train(
    cwd: Path, subcommand: str, *args: str, timeout: float = 300, fresh: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/train.py`` in a separate process, as a user does (from the preloaded interpreter of
    ``preloaded.py``; ``fresh``: from a fresh one, for what happens before the script's first line)."""
    return preloaded.run(
        train_command(subcommand, *args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=subprocess_env(), fresh=fresh,
    )  # fmt: skip


def held_out(loaders: Any) -> tuple[np.ndarray, np.ndarray]:
    """The held-out inputs and targets a run validated on, in float64: the tensors of a ``StepLoader``, or the
    batches of a ``DataLoader`` put together, read in this process (the run's loader may have persistent workers,
    which a test's own pass would leave running until the garbage collector waits for each and kills it)."""
    if hasattr(loaders, "tensors"):
        x, y = loaders.tensors
    else:
        same = DataLoader(loaders.dataset, batch_size=loaders.batch_size, sampler=loaders.sampler,
                          collate_fn=loaders.collate_fn)  # fmt: skip
        batches = list(same)
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    return x.double().numpy(), y.double().numpy()


def run_folder(root: Path, version: int = 0) -> Path:
    return root / "lightning_logs" / f"version_{version}"


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The model's weights in a checkpoint file."""
    return load_checkpoint(path)["state_dict"]  # type: ignore[no-any-return]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    """Bit for bit (``atol=0``), or within ``atol``, for every weight of two state dicts."""
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            assert (a[key].double() - b[key].double()).abs().max().item() <= atol, key


def least_squares(num_samples: int = 2000, degree: int = 3) -> tuple[np.ndarray, float]:
    """The closed-form optimum, computed here with numpy alone: an independent witness for training runs."""
    x = np.linspace(-np.pi, np.pi, num_samples)
    vander = np.vander(x, degree + 1, increasing=True)
    w, *_ = np.linalg.lstsq(vander, np.sin(x), rcond=None)
    return w, float(np.sum((vander @ w - np.sin(x)) ** 2))


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    """GET ``url`` (POST ``body`` as JSON, if given) and decode the JSON answer: a service's REST API, as a client."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def assert_same_optimizer_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Bit for bit, every entry of two optimizers' states (a checkpoint's ``optimizer_states[0]["state"]``)."""
    assert a.keys() == b.keys()
    for index, state in a.items():
        for key, value in state.items():  # RMSprop's running averages, Adam's moments and step count
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[index][key])), (index, key)


def start_and_signal(
    args: list[str], cwd: Path, at_step: int, signum: int, delay: float = 0.0, group: bool = False
) -> preloaded.Process:
    """Start a real training process; once it has printed step ``at_step``, wait ``delay`` s and send ``signum``: to
    the process, or with ``group`` to its whole process group (its DataLoader workers too), as a terminal's Ctrl-C
    or ``kill -- -PGID`` does."""
    process = preloaded.popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
        start_new_session=group,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        match = re.match(r"^(\d+) ", line)
        if match and int(match.group(1)) >= at_step:
            time.sleep(delay)
            if group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
            break
    return process


def hparams_plugin(run: Path) -> dict[str, Any]:
    """The HPARAMS tab's content of the TensorBoard events in ``run``, by tag."""
    accumulator = plugin_event_accumulator.EventAccumulator(str(run))
    accumulator.Reload()
    return accumulator.PluginTagToContent("hparams")  # type: ignore[no-any-return]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no process listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
