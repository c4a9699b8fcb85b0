"""The host ends of a task process's stdio, as containerd names them (protocols.md §2.6).

Contract of :func:`open_stdio`: returns a :class:`HostStdio` whose ``stdin``/``stdout``/
``stderr`` are fds owned by the shim (None for a stream not wanted), or raises ConfigError
naming the bad URI, with nothing left open.
- ``""``: not wanted;
- a path or ``fifo://path``: the client's FIFO. Opened read-write, so opening never blocks,
  a client that detaches for a while does not break the stream, and stdin ends only through
  ``CloseIO`` (the client sends it when its own input ends);
- ``file:///path``: stdout and stderr appended to one file (created, with its directory);
- ``binary:///path?k=v``: a logging program started with the process's stdout and stderr as
  fds 3 and 4 and a ready pipe as fd 5, environment ``CONTAINER_ID`` and
  ``CONTAINER_NAMESPACE``, query pairs as arguments; ready once it writes to or closes fd 5.
:meth:`HostStdio.close` closes our ends (a logging program then sees EOF) and waits for the
logging program to exit, killing it after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from runvm.errors import ConfigError

READY_TIMEOUT = 10.0
EXIT_GRACE = 5.0


@dataclass
class HostStdio:
    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    logger_pid: int | None = None
    _fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self.stdin = self.stdout = self.stderr = None
        if self.logger_pid is not None:
            _reap(self.logger_pid, EXIT_GRACE)
            self.logger_pid = None


def _reap(pid: int, grace: float) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _fifo(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from exc


def open_stdio(
    stdin: str, stdout: str, stderr: str, container_id: str, namespace: str
) -> HostStdio:
    """See the module docstring."""
    io = HostStdio()
    try:
        if stdin:
            io.stdin = _fifo(stdin.removeprefix("fifo://"), "stdin")
            io._fds.append(io.stdin)
        uri = urlsplit(stdout) if "://" in stdout else None
        if uri is None or uri.scheme == "fifo":
            for name, value in (("stdout", stdout), ("stderr", stderr)):
                if value:
                    fd = _fifo(value.removeprefix("fifo://"), name)
                    io._fds.append(fd)
                    setattr(io, name, fd)
        elif uri.scheme == "file":
            io.stdout = io.stderr = _log_file(uri.path)
            io._fds.append(io.stdout)
        elif uri.scheme == "binary":
            _start_logger(
                io, uri.path, parse_qsl(uri.query, keep_blank_values=True), container_id, namespace
            )
        else:
            raise ConfigError(f"stdout {stdout}: unknown scheme {uri.scheme!r} "
                              "(use a FIFO path, file:// or binary://)")  # fmt: skip
    except BaseException:
        io.close()
        raise
    return io


def _log_file(path: str) -> int:
    if not path.startswith("/"):
        raise ConfigError(f"file:// log path {path!r} must be absolute")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise ConfigError(f"log file {path}: {exc.strerror}") from exc


def _start_logger(
    io: HostStdio, path: str, query: list[tuple[str, str]], container_id: str, namespace: str
) -> None:
    if not os.path.isabs(path) or not os.access(path, os.X_OK):
        raise ConfigError(f"logging binary {path!r} is not an executable absolute path")
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    io._fds += [out_w, err_w]
    io.stdout, io.stderr = out_w, err_w
    args = [path] + [item for pair in query for item in pair]  # as containerd: key, value
    env = {"CONTAINER_ID": container_id, "CONTAINER_NAMESPACE": namespace}
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                   (os.POSIX_SPAWN_DUP2, null, 2), (os.POSIX_SPAWN_DUP2, out_r, 3),
                   (os.POSIX_SPAWN_DUP2, err_r, 4), (os.POSIX_SPAWN_DUP2, ready_w, 5)]  # fmt: skip
        try:
            io.logger_pid = os.posix_spawn(path, args, env, file_actions=actions, setsid=True)
        except OSError as exc:
            raise ConfigError(f"logging binary {path}: {exc.strerror}") from exc
    finally:
        for fd in (null, out_r, err_r, ready_w):
            os.close(fd)
    try:
        readable, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
        if not readable:
            raise ConfigError(f"logging binary {path} did not signal ready on fd 5 "
                              f"within {READY_TIMEOUT:.0f} s")  # fmt: skip
        os.read(ready_r, 1)
    finally:
        os.close(ready_r)
