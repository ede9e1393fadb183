"""The example's figures: the fitted curve against sin(x) during training, and the predictions of ``predict``."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

from litpoly.callbacks.report import file_writer


class FitFigure:
    """A matplotlib figure of the fitted curve against the target, redrawn cheaply at each validation.

    The axes, the target curve and the training points are drawn once; each update redraws only the fitted
    line on the saved background (matplotlib's blitting, as its animations do), a fraction of a full render.

    Args:
        x: A sample of the training inputs (a few hundred are plenty).
        y: Their targets.
        grid: Where to draw the curves.
        target: The target function on ``grid``.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, grid: np.ndarray, target: np.ndarray) -> None:
        import matplotlib  # imported here: only runs that draw figures pay for it

        matplotlib.use("Agg")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.grid = grid
        figure = Figure(figsize=(5, 3.2), dpi=80)
        self.canvas = FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        ax.plot(x, y, ".", ms=3, color="0.6", label="training points")
        ax.plot(grid, target, "k--", lw=1.2, label="target")
        (self.line,) = ax.plot(self.grid, np.zeros_like(self.grid), color="C3", lw=2, label="fit", animated=True)
        margin = 0.25 * (y.max() - y.min() + 1e-12)
        ax.set(xlim=(x.min(), x.max()), ylim=(y.min() - margin, y.max() + margin), xlabel="x", ylabel="y")
        ax.legend(loc="upper left", fontsize=7)
        ax.grid(alpha=0.3)
        figure.tight_layout()
        self.canvas.draw()  # type: ignore[no-untyped-call]
        self.background = self.canvas.copy_from_bbox(figure.bbox)  # type: ignore[no-untyped-call]
        self.ax = ax

    def render(self, coefficients: list[float]) -> np.ndarray:
        """The figure with the polynomial ``coefficients`` drawn, as an ``(H, W, 3)`` uint8 image."""
        self.line.set_ydata(np.polynomial.polynomial.polyval(self.grid, coefficients))
        self.canvas.restore_region(self.background)  # type: ignore[no-untyped-call]
        self.ax.draw_artist(self.line)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()  # type: ignore[no-untyped-call]


def plot_predictions(x: np.ndarray, target: np.ndarray, prediction: np.ndarray, path: Path) -> None:
    """Save the prediction against the target, and its error, as a PNG."""
    import matplotlib  # imported here: only `predict` needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_err) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, height_ratios=(3, 1))
    ax.plot(x, target, "k--", lw=1.5, label="target")
    ax.plot(x, prediction, color="C3", lw=2, label="prediction")
    ax.set(ylabel="y", title=f"Prediction on {len(x)} points")
    ax.legend()
    ax_err.plot(x, prediction - target, color="C0")
    ax_err.set(xlabel="x", ylabel="error")
    for a in (ax, ax_err):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class BackgroundWriter:
    """Runs logging calls on one worker thread, in the order they were submitted.

    ``SummaryWriter.add_image`` encodes the PNG and checksums the record in the calling thread: for a figure,
    far longer than a small model's training step. zlib releases the GIL, so on a worker thread that work
    overlaps training on another core. One worker keeps the events in order.

    Example:
        >>> written = []
        >>> writer = BackgroundWriter()
        >>> writer.submit(written.append, "an image")
        >>> writer.close()  # waits for every submitted call, and re-raises the first failure
        >>> written
        ['an image']
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[Any]] = []

    def submit(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="litpoly-writer")
        self._pending.append(self._pool.submit(function, *args, **kwargs))

    def close(self) -> None:
        """Wait for every submitted call; re-raise what failed in the worker."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()


def add_figure(experiment: SummaryWriter, tag: str, image: np.ndarray, step: int, colors: int = 64) -> None:
    """Log a plot to TensorBoard's IMAGES tab, as ``experiment.add_image`` would, in a fraction of the bytes.

    A plot has few colours: as a palette PNG of at most ``colors`` of them it looks the same and is about a
    quarter the size of the RGB PNG ``add_image`` writes. That matters beyond the disk: TensorBoard's event
    writer checksums every record in pure Python, holding the GIL, so a large image slows training down
    even when logged from another thread. Not for photographs, which need all their colours.

    Args:
        experiment: The ``SummaryWriter`` (``TensorBoardLogger.experiment``).
        tag: The image's name in TensorBoard.
        image: ``(height, width, 3)`` uint8 RGB.
        step: The global step it belongs to.
        colors: At most this many colours (2 to 256).
    """
    from PIL import Image  # imported here: only runs that log figures need it

    height, width, _ = image.shape
    buffer = io.BytesIO()
    Image.fromarray(image).quantize(colors, method=Image.Quantize.FASTOCTREE).save(buffer, format="PNG")
    png = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    file_writer(experiment).add_summary(Summary(value=[Summary.Value(tag=tag, image=png)]), step)
