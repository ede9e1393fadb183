"""Start the project's scripts from an interpreter that has already imported torch and Lightning.

A test that runs ``python scripts/train.py …`` as a user does pays, in every process, the seconds ``import lightning``
takes (torch, ``torch._dynamo``, torchmetrics): on a small machine, much of the suite's time. Here a server process
imports what ``scripts/train.py`` imports, once per test worker, and forks for each command. The forked child becomes
the script: its own working folder, environment, ``sys.argv`` and standard streams (the test's pipes, passed over a
Unix socket), a new session where asked, then the script run as ``__main__``. From there it exits as
``python script.py`` does (``sys.exit``, an uncaught exception, Ctrl-C), through the interpreter's own shutdown.

What differs from a fresh interpreter is only what happens before the script's first line: the imports ran earlier,
in the environment of this test worker's first command (``tempfile``'s cached folder is looked up again), and a
warning they print goes to the server's log. Tests of start-up itself (Ctrl-C while Lightning loads, no warning on a
default run) start a fresh interpreter (``fresh=True``); so does every test under ``LITPOLY_TEST_FRESH=1``.

:func:`popen` and :func:`run` take the arguments of :class:`subprocess.Popen` and :func:`subprocess.run` that the
tests use, and fall back to them for any other command.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
PRELOADED = {"train.py", "sweep.py", "check.py"}  # the scripts that import Lightning anyway


# --- The server (``python tests/preloaded.py SOCKET``): it imports, then forks a child per request. ---


def _reap(waiting: dict[int, socket.socket]) -> None:
    """Send each ended child's exit code (as ``Popen.returncode`` has it) to the client that started it."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = waiting.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):  # the client may be gone
                conn.send(str(os.waitstatus_to_exitcode(status)).encode())
            conn.close()


def _serve(path: str) -> dict[str, Any]:
    """Serve requests until the process that started the server is gone. Returns only in a forked child: the
    request it is to carry out, its standard streams already in place."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path + ".new")
    listener.listen(16)
    os.rename(path + ".new", path)  # the client waits for this name: it is there once the server listens
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select() through the pipe
    waiting: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        ready, _, _ = select.select([listener, wake_read], [], [], 1.0)
        if wake_read in ready:
            os.read(wake_read, 4096)
        if listener in ready:
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            pid = os.fork()
            if pid == 0:  # the child: everything of the server's closed or put back as a fresh interpreter has it
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for other in (listener, *waiting.values()):
                    other.close()
                os.close(wake_read)
                os.close(wake_write)
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                request: dict[str, Any] = json.loads(message)
                if request["new_session"]:
                    os.setsid()
                conn.send(str(os.getpid()).encode())  # once in its session: as Popen returns after the child's setsid
                conn.close()
                return request
            for fd in fds:
                os.close(fd)
            waiting[pid] = conn
        _reap(waiting)
    sys.exit(0)


def _become(request: dict[str, Any]) -> None:
    """In the forked child: take the command's folder, environment and arguments."""
    import random

    import numpy as np

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = request["argv"]
    sys.path[0] = str(Path(sys.argv[0]).resolve().parent)  # as `python scripts/x.py` puts scripts/ first
    random.seed()  # a fresh interpreter's unseeded generators differ from one process to the next
    np.random.seed()  # noqa: NPY002 - the legacy global generator, as a fresh interpreter seeds it
    tempfile.tempdir = None  # found again from TMPDIR, which a command may set


# --- The client: what the tests call. ---


class _Server:
    """The server of this test process, started at the first request, stopped when this process exits."""

    process: subprocess.Popen[bytes] | None = None
    path = ""

    @classmethod
    def address(cls, env: dict[str, str]) -> str:
        if cls.process is None:
            folder = tempfile.mkdtemp(prefix="lp-")  # short: a Unix socket's path may not pass 107 bytes
            cls.path = os.path.join(folder, "s")
            log = open(os.path.join(folder, "log"), "w+b")  # noqa: SIM115 - read back only if the server fails
            cls.process = subprocess.Popen(
                [sys.executable, __file__, cls.path], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
            atexit.register(cls.process.kill)
            deadline = time.monotonic() + 300
            while not os.path.exists(cls.path):
                if cls.process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the preloaded server did not start:\n{log.read().decode()[-3000:]}")
                time.sleep(0.05)
        return cls.path


class PreloadedProcess:
    """A command run by a child of the server: what the tests use of :class:`subprocess.Popen`."""

    def __init__(self, args: list[str], pid: int, conn: socket.socket, stdout: IO[Any] | None, stderr: IO[Any] | None):
        self.args, self.pid, self._conn = args, pid, conn
        self.stdout, self.stderr = stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
            self._read_returncode()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._conn], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self._read_returncode()
        assert self.returncode is not None
        return self.returncode

    def _read_returncode(self) -> None:
        self.returncode = int(self._conn.recv(64))
        self._conn.close()

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Read standard output and error to their ends, then wait, within ``timeout`` seconds in all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        results: dict[str, Any] = {}
        readers = [
            threading.Thread(target=lambda n=name, s=stream: results.__setitem__(n, s.read()), daemon=True)
            for name, stream in (("out", self.stdout), ("err", self.stderr))
            if stream is not None
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return results.get("out"), results.get("err")

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


Process = subprocess.Popen[Any] | PreloadedProcess


def _preloadable(args: list[str], env: dict[str, str] | None) -> bool:
    return (
        os.environ.get("LITPOLY_TEST_FRESH") != "1"
        and len(args) >= 2
        and args[0] == sys.executable
        and Path(args[1]).parent == SCRIPTS
        and Path(args[1]).name in PRELOADED
        and env is not None
        and env.get("PYTHONUNBUFFERED") == "1"  # as the server's own streams are set up
    )


def popen(
    args: list[str],
    *,
    cwd: str | Path,
    env: dict[str, str],
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    text: bool = False,
    start_new_session: bool = False,
    fresh: bool = False,
) -> Process:
    """Start ``args`` as :class:`subprocess.Popen` does (with these of its arguments); a script of ``PRELOADED``
    from the preloaded server, unless ``fresh``."""
    args = [str(a) for a in args]
    if fresh or not _preloadable(args, env):
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text,
                                start_new_session=start_new_session)  # fmt: skip
    ends: list[int] = [os.open(os.devnull, os.O_RDONLY)]
    ours: list[IO[Any] | None] = []
    for stream in (stdout, stderr):
        if stream == subprocess.PIPE:
            read, write = os.pipe()
            ours.append(open(read, encoding="utf-8") if text else open(read, "rb"))  # noqa: SIM115
            ends.append(write)
        else:
            ours.append(None)
            if stream == subprocess.DEVNULL:
                ends.append(os.open(os.devnull, os.O_WRONLY))
            elif stream is None:
                ends.append(os.dup(1 if len(ends) == 1 else 2))
            else:
                ends.append(os.dup(stream.fileno()))  # type: ignore[union-attr]
    request = {"argv": args[1:], "cwd": str(cwd), "env": env, "new_session": start_new_session}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(_Server.address(env))
        socket.send_fds(conn, [json.dumps(request).encode()], ends)
        pid = int(conn.recv(64))
    finally:
        for fd in ends:
            os.close(fd)
    return PreloadedProcess(args, pid, conn, ours[0], ours[1])


def run(
    args: list[str],
    *,
    cwd: str | Path,
    env: dict[str, str],
    capture_output: bool = False,
    text: bool = False,
    timeout: float | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess[Any]:
    """As :func:`subprocess.run` with these of its arguments (on a timeout the process is killed)."""
    pipe = subprocess.PIPE if capture_output else None
    process = popen(args, cwd=cwd, env=env, stdout=pipe, stderr=pipe, text=text, fresh=fresh)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    assert process.returncode is not None
    return subprocess.CompletedProcess([str(a) for a in args], process.returncode, out, err)


if __name__ == "__main__":
    from litpoly.cli import main  # noqa: F401 - what scripts/train.py imports: the point of the server

    _become(_serve(sys.argv[1]))
    import runpy

    runpy.run_path(sys.argv[0], run_name="__main__")
