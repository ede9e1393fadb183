"""The study's database: where it is, opening it (once another process may be creating it), and losing it.

A sweep's study lives in a database Optuna opens through sqlalchemy: by default an SQLite file in the sweep's
folder, or any database ``--storage`` names (PostgreSQL for workers on several machines). Every error is one line,
its URL without the password.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from litpoly.console import one_line, without_password
from litpoly.errors import RunError, SettingError
from litpoly.sweep.space import SearchSpace

#: Seconds between a running trial's heartbeats, and after how many without one its trial counts as dead (its
#: process was killed): then the next trial any worker starts marks it failed, and Optuna retries its settings.
HEARTBEAT_S = 2
GRACE_S = 60

#: Attempts at opening a storage that another process is creating at the same moment (see ``open_storage``).
CREATE_TRIES = 5


class StorageLost(RunError):
    """The study's database stopped answering during the sweep (a server stopped, a network lost): the trials that
    finished are in it, and the same command goes on with the study once it answers again (exit status 1)."""

    def __init__(self, url: str, error: BaseException) -> None:
        cause = getattr(error, "orig", None) or error  # sqlalchemy's wrapper holds the driver's own error
        reason = one_line(str(cause).split("\n")[0], limit=200) or type(cause).__name__
        super().__init__(
            f"lost the study's storage {without_password(url)} ({reason}): its finished trials are kept; run the "
            "same command again once it answers"
        )


def storage_lost(error: BaseException) -> bool:
    """Whether ``error`` is the database's (sqlalchemy's, its driver's, Optuna's storage's), not a trial's."""
    import optuna

    module = type(error).__module__
    return isinstance(error, optuna.exceptions.StorageInternalError) or module.startswith(("sqlalchemy", "psycopg"))


def storage_url(space: SearchSpace, storage: str | None, logs: Path) -> str:
    """The study's database: ``storage`` as given, or an SQLite file in the sweep's folder."""
    return storage or f"sqlite:///{(logs / 'sweeps' / space.name / 'study.db').resolve()}"


def open_storage(url: str, grace_s: float = GRACE_S) -> Any:
    """Optuna's RDB storage at ``url``, with heartbeats, and a retry for a trial whose process was killed.

    Raises:
        SettingError: The database cannot be reached or opened (one line, the URL without its password).
    """
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        try:
            Path(url.split(":///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SettingError(f"cannot open the study's storage {without_password(url)}: {error}") from None
        kwargs["connect_args"] = {"timeout": 60}  # several workers take turns writing one file
    elif url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    # Each trial prints its own line (and its log has the details): Optuna's own messages, and the traceback it
    # logs for every failed trial, would repeat them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in use
    attempt = 1
    while True:
        try:
            return RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=int(grace_s),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        except Exception as error:  # sqlalchemy's errors for a bad URL, a refused connection, a missing driver
            if attempt < CREATE_TRIES and _created_elsewhere(error):
                attempt += 1
                time.sleep(0.5)
                continue
            why = one_line(str(error).split("\n(Background")[0])  # (sqlalchemy's link to its docs: not a reason)
            raise SettingError(f"cannot open the study's storage {without_password(url)}: {why}") from None


def _created_elsewhere(error: Exception) -> bool:
    """Whether opening a new database failed because another process is creating Optuna's tables in it at this
    moment (sweeps started together on a fresh study, on several machines or in several terminals): one creates
    them, the others find a table or Optuna's version row already there. Opened again, it is complete."""
    from sqlalchemy.exc import IntegrityError

    return isinstance(error, IntegrityError) or "already exists" in str(error)
