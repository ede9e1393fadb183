"""The one place the run layer reaches into a private of Lightning's, each with the reason and a test.

``test_lightning_still_has_the_loop_attributes_compat_resets`` (in tests/run/test_resume_dataloader.py) fails when
a Lightning upgrade changes what a function here relies on: the upgrade breaks a test, not a user's run.
"""

from __future__ import annotations

import lightning as L


def forget_train_loader(trainer: L.Trainer) -> bool:
    """Drop the training loader the fit loop has already set up, so that it sets it up again; ``True`` if it had one.

    Why: ``trainer.estimated_stepping_batches`` (the usual way to size OneCycleLR in ``configure_optimizers``)
    sets up the training loader and starts iterating it *before* Lightning restores the checkpoint's loop state,
    and the fit loop then reuses that loader: the position the checkpoint saved for it is never loaded, and with
    persistent workers the first resumed epoch replays the order of epoch 0. Called after ``configure_optimizers``
    and before the restore (``on_fit_start``), this makes the fit loop request the loader again once the state
    is there to load. Its workers are shut down by Lightning's own teardown of the fetcher.
    """
    loop = trainer.fit_loop
    if loop._combined_loader is None:
        return False
    if loop._data_fetcher is not None:
        loop._data_fetcher.teardown()
        loop._data_fetcher = None
    loop._combined_loader = None
    return True
