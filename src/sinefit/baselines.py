"""The seed notebook's raw PyTorch loops, without Lightning: the baselines litpoly is compared and timed against.

- :func:`autograd_loop` is the seed's second cell: coefficient tensors, autograd, a hand-written
  SGD update.
- :func:`nn_loop` is its third cell: ``nn.Linear(degree, 1)`` on precomputed powers of x, a summed
  ``MSELoss`` and a ``torch.optim`` optimizer (SGD or RMSprop).

Both start from given coefficients ``[a, b, c, d]`` so every implementation can start from the
same point, and read the loss back (a device sync) only on the recorded steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor


class Curve(NamedTuple):
    """A run's recorded losses (before the update at each recorded 0-based step) and final coefficients."""

    steps: list[int]
    losses: list[float]
    final_coefficients: list[float]


def autograd_loop(x: Tensor, y: Tensor, w0: list[float], lr: float, num_steps: int, record_every: int = 100) -> Curve:
    """The seed's autograd cell: ``y_pred = a + b x + c x² + d x³``, ``loss.backward()``, ``w -= lr * grad``."""
    coefficients = [torch.tensor(w, dtype=x.dtype, device=x.device, requires_grad=True) for w in w0]
    steps, losses = [], []
    for t in range(num_steps):
        y_pred = sum(w * x**k for k, w in enumerate(coefficients))
        loss = (y_pred - y).pow(2).sum()
        if t % record_every == record_every - 1:
            steps.append(t)
            losses.append(loss.item())
        loss.backward()  # type: ignore[no-untyped-call]
        with torch.no_grad():
            for w in coefficients:
                assert w.grad is not None
                w -= lr * w.grad
                w.grad = None
    return Curve(steps, losses, [w.item() for w in coefficients])


def nn_loop(
    optimizer: Literal["sgd", "rmsprop"],
    x: Tensor,
    y: Tensor,
    w0: list[float],
    lr: float,
    num_steps: int,
    record_every: int = 100,
    step_end: Callable[[int], None] | None = None,
) -> Curve:
    """The seed's ``torch.nn`` cell: ``Linear`` on the powers ``x, x², x³`` (computed once), summed MSE, optimizer.

    ``step_end(t)``, if given, is called after each update (the benchmark reads its clock there).
    """
    degree = len(w0) - 1
    xx = x.unsqueeze(-1).pow(torch.arange(1, degree + 1, device=x.device))
    linear = torch.nn.Linear(degree, 1)
    model = torch.nn.Sequential(linear, torch.nn.Flatten(0, 1)).to(x.device, x.dtype)
    with torch.no_grad():
        linear.bias.fill_(w0[0])
        linear.weight.copy_(torch.tensor([w0[1:]]))
    loss_fn = torch.nn.MSELoss(reduction="sum")
    optim_class = torch.optim.RMSprop if optimizer == "rmsprop" else torch.optim.SGD
    optim = optim_class(model.parameters(), lr=lr)
    steps, losses = [], []
    for t in range(num_steps):
        loss = loss_fn(model(xx), y)
        if t % record_every == record_every - 1:
            steps.append(t)
            losses.append(loss.item())
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step_end is not None:
            step_end(t)
    final = [linear.bias.item(), *linear.weight.detach().flatten().tolist()]
    return Curve(steps, losses, final)
