"""The measurements behind the check's verdicts, each on any LightningModule and any batch it trains on."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

from litpoly.console import step_loss


@dataclass(frozen=True)
class Difference:
    """How far apart two nested states are: the largest absolute difference of their numbers, and where it is."""

    value: float
    where: str

    def __bool__(self) -> bool:
        return self.value != 0


def difference(a: Any, b: Any, where: str = "") -> Difference:
    """The largest absolute difference between two nested states (dicts, lists, tensors, numbers), and its key.

    Values that differ in kind — a key on one side only, another shape, another string — are infinitely far apart.

    Example:
        >>> difference({"w": torch.tensor([1.0, 2.0]), "n": 3}, {"w": torch.tensor([1.0, 2.5]), "n": 3})
        Difference(value=0.5, where='w')
        >>> difference({"lr": [0.1]}, {"lr": [0.1], "extra": 1})
        Difference(value=inf, where='extra')
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if a.keys() != b.keys():
            return Difference(math.inf, f"{where}.{next(iter(a.keys() ^ b.keys()))}".lstrip("."))
        parts = [difference(a[k], b[k], f"{where}.{k}".lstrip(".")) for k in a]
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return Difference(math.inf, where)
        parts = [difference(x, y, f"{where}.{i}".lstrip(".")) for i, (x, y) in enumerate(zip(a, b, strict=True))]
    elif isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return Difference(math.inf, where)
        if a.numel() == 0 or torch.equal(a, b):
            return Difference(0.0, where)
        return Difference(float((a.double() - b.double()).abs().nan_to_num(math.inf).max()), where)  # NaN: inf
    elif isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return Difference(0.0 if a == b else abs(float(a) - float(b)), where)
    else:
        return Difference(0.0 if a == b else math.inf, where)
    return max(parts, key=lambda d: d.value, default=Difference(0.0, where))


def largest(state: Mapping[str, Any]) -> float:
    """The largest absolute value among the floating-point tensors of ``state``."""
    values = [float(t.abs().max()) for t in state.values() if isinstance(t, Tensor) and t.is_floating_point()]
    return max((v for v in values if not math.isnan(v)), default=0.0)


def as_float64(batch: Any) -> Any:
    """``batch`` with its floating-point tensors in float64."""
    return apply_to_collection(batch, Tensor, lambda t: t.double() if t.is_floating_point() else t)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNGs forked and seeded: a step run inside draws the same dropout masks every time."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def unlogged(model: L.LightningModule) -> Iterator[None]:
    """``self.log`` and ``self.log_dict`` do nothing inside: the training step runs outside the Trainer's loop,
    which is what they record into."""
    setattr(model, "log", lambda *args, **kwargs: None)  # noqa: B010  # an instance attribute over the method
    setattr(model, "log_dict", lambda *args, **kwargs: None)  # noqa: B010
    try:
        yield
    finally:
        del model.log, model.log_dict


def training_loss(model: L.LightningModule, batch: Any) -> Tensor:
    """The loss ``training_step`` returns for ``batch``, as Lightning reads it.

    Raises:
        ValueError: The training step returns no loss.
    """
    loss = step_loss(model.training_step(batch, 0))
    if loss is None or loss.numel() != 1:
        raise ValueError("training_step returns no scalar loss (a tensor, or a dict with `loss`)")
    return loss


@dataclass(frozen=True)
class GradientCheck:
    """The loss's slope along one direction, by autograd and by central differences."""

    analytic: float
    numeric: float
    gradient_norm: float

    @property
    def error(self) -> float:
        """``|numeric - analytic| / ‖∇L‖``: the error relative to the largest slope any unit direction can have, so a
        direction nearly orthogonal to the gradient does not inflate it."""
        return abs(self.numeric - self.analytic) / max(self.gradient_norm, torch.finfo(torch.float64).tiny)


def check_gradient(model: L.LightningModule, batch: Any, step: float = 1e-6, seed: int = 0) -> GradientCheck:
    """Autograd's gradient of the training loss against central differences, in float64, along a random unit
    direction of all trainable parameters at once (what ``torch.autograd.gradcheck``'s fast mode does, with the
    figure kept). Every evaluation draws the same random numbers, so dropout is the same function each time.

    ``model`` is converted to float64 in place.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters")
    model.double()
    batch = as_float64(batch)
    device = parameters[0].device
    model.zero_grad(set_to_none=True)
    with unlogged(model):
        with seeded(seed, device):
            loss = training_loss(model, batch)
        loss.backward()  # type: ignore[no-untyped-call]
        gradient = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in parameters])
        direction = torch.randn(gradient.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        direction = (direction / direction.norm()).to(device)
        shifts = torch.split(direction, [p.numel() for p in parameters])
        original = [p.detach().clone() for p in parameters]
        values = []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                for p, shift in zip(parameters, shifts, strict=True):
                    p.add_(shift.view_as(p), alpha=sign * step)
                with seeded(seed, device):
                    values.append(float(training_loss(model, batch)))
                for p, start in zip(parameters, original, strict=True):
                    p.copy_(start)
    model.zero_grad(set_to_none=True)
    return GradientCheck(float(gradient @ direction), (values[0] - values[1]) / (2 * step), float(gradient.norm()))


def first_optimizer(configured: Any) -> torch.optim.Optimizer:
    """The optimizer in what ``configure_optimizers`` returns, in any of the forms Lightning accepts.

    Raises:
        ValueError: There is none.
    """
    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, Mapping) and "optimizer" in configured:
        return first_optimizer(configured["optimizer"])
    if isinstance(configured, list | tuple) and configured:
        return first_optimizer(configured[0])
    raise ValueError(f"configure_optimizers returns no optimizer ({type(configured).__name__})")


@dataclass(frozen=True)
class Overfit:
    """The loss on one batch before and after some steps on it."""

    first: float
    last: float
    optimizer: str
    lr: float

    @property
    def ratio(self) -> float:
        """The last loss over the first (for a positive loss)."""
        return self.last / self.first


def overfit(model: L.LightningModule, batch: Any, steps: int, seed: int = 0) -> Overfit:
    """Train ``model`` on ``batch`` alone for ``steps`` steps of its own optimizer; the loss before and after.

    The learning rate is the one the model's schedule is built around (a scheduler's ``max_lr`` or ``initial_lr``,
    else the optimizer's): the schedule itself is sized for the run, not for these steps, and a warm-up would
    start them at almost nothing.
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters")
    model.train()
    optimizer = first_optimizer(model.configure_optimizers())
    for group in optimizer.param_groups:
        group["lr"] = group.get("max_lr", group.get("initial_lr", group["lr"]))
    device = next(model.parameters()).device

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = training_loss(model, batch)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss.detach()

    with unlogged(model), seeded(seed, device):
        losses = [float(optimizer.step(closure)) for _ in range(steps)]  # type: ignore[arg-type]
        with torch.no_grad():
            losses.append(float(training_loss(model, batch)))
    return Overfit(losses[0], losses[-1], type(optimizer).__name__, float(optimizer.param_groups[0]["lr"]))
