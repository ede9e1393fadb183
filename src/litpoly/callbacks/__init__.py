"""The run layer's callbacks, for any LightningModule: the command line adds each where it applies
(:meth:`litpoly.cli.litcli.LitCLI.instantiate_trainer`); a script of one's own can add them to a ``Trainer``."""

from litpoly.callbacks.checkpoint import (
    BestCheckpoint,
    BestSettings,
    EarlyStoppingSettings,
    PeriodicCheckpoint,
    StopWhenNotImproving,
)
from litpoly.callbacks.console import ConsoleReport
from litpoly.callbacks.guard import RunGuard
from litpoly.callbacks.predictions import PredictionWriter
from litpoly.callbacks.progress import LineProgress, TimedProgressBar
from litpoly.callbacks.report import RunReport
from litpoly.callbacks.resume import ExactResume, WeightsAsSaved
from litpoly.callbacks.signal_stop import SignalStop

__all__ = [
    "BestCheckpoint",
    "BestSettings",
    "ConsoleReport",
    "EarlyStoppingSettings",
    "ExactResume",
    "LineProgress",
    "PeriodicCheckpoint",
    "PredictionWriter",
    "RunGuard",
    "RunReport",
    "SignalStop",
    "StopWhenNotImproving",
    "TimedProgressBar",
    "WeightsAsSaved",
]
