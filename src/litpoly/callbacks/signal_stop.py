"""Stopping a command that a signal reached outside of training, at the next point where nothing is half-done (see
:mod:`litpoly.signals`; inside training, ``RunGuard`` stops the run at the end of its step)."""

from __future__ import annotations

from typing import Any

import lightning as L

from litpoly import signals


class SignalStop(L.Callback):
    """Ends a command whose process got SIGINT, SIGTERM or SIGHUP during setup, the sanity check, or an evaluation
    (``validate``, ``test``, ``predict``): at the end of the stage or batch under way, with :class:`signals.Stop`,
    which the command line says in one line. Nothing of a run that never trained is kept.

    Not at a validation inside ``fit``'s training: there ``RunGuard`` stops the run at the end of its next training
    step, with its state saved.
    """

    @staticmethod
    def _stop_if_signalled() -> None:
        if (signum := signals.received()) is not None:
            raise signals.Stop(signum)

    def _stop_unless_training(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            self._stop_if_signalled()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop_if_signalled()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled()

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled()

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._stop_unless_training(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._stop_if_signalled()

    def on_predict_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._stop_if_signalled()
