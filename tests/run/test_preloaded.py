"""tests/preloaded.py: a command started from the preloaded interpreter says, writes and exits what the same
command says, writes and exits from a fresh one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

import preloaded
from helpers import subprocess_env, train_command


@pytest.mark.slow
def test_a_preloaded_command_is_the_fresh_one(tmp_path: Path) -> None:
    fit = train_command("fit", "--trainer.max_steps", "30", "--console.every_n_steps", "10", "--model.parity", "false")
    said = {}
    for fresh in (True, False):
        folder = tmp_path / f"fresh={fresh}"
        folder.mkdir()
        ran = preloaded.run(fit, cwd=folder, env=subprocess_env(), capture_output=True, text=True, timeout=300,
                            fresh=fresh)  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-2000:]
        checkpoint = folder / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
        said[fresh] = re.findall(r"^\d+ \S+$", ran.stdout, re.M), ran.stderr.splitlines()[-1], checkpoint.is_file()
    assert said[True] == said[False] and len(said[True][0]) == 3 and said[True][2], said
    refused = preloaded.run(train_command("fit", "--trainer.max_step", "30"), cwd=tmp_path, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == "error: unrecognized arguments: --trainer.max_step 30\n"  # one line, no traceback

    started = preloaded.popen(fit, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)  # fmt: skip
    assert isinstance(started, preloaded.PreloadedProcess)
    assert os.getsid(started.pid) == started.pid  # a session of its own, as start_new_session gives
    started.kill()
    started.communicate(timeout=60)
    assert started.returncode == -signal.SIGKILL  # as Popen reports a process a signal ended
