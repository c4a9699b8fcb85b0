"""Forking a long-lived helper (the monitor, an exec helper) and hearing how its start went.

Contract of :func:`fork_helper`: forks; the child keeps only fds 0-2, ``keep`` and the report pipe,
starts a new session and runs ``body(ready)``, which must call ``ready.ok()`` once it is up
or ``ready.error(msg)``; the child then exits with ``body``'s return value as a status
(:func:`exit_like`). The parent returns the child's PID after "ok", or reaps it and raises
RunvmError with its message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable

from runvm.errors import RunvmError

MAX_REPORT = 65536
log = logging.getLogger(__name__)


class ReadyPipe:
    """The child's end of the report pipe: one message, then closed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sent_ok = False

    def _send(self, message: str) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self.fd, message.encode()[:4000])
            os.close(self.fd)
            self.fd = -1

    def ok(self) -> None:
        self._send("ok")
        self.sent_ok = True

    def error(self, message: str) -> None:
        self._send(f"error: {message}")

    @property
    def open(self) -> bool:
        return self.fd >= 0


def exit_like(status: int) -> None:
    """Leave with a container status: exit code, or death by the same signal (128+N)."""
    signum = status - 128
    if 0 < signum < signal.NSIG and signum != signal.SIGSTOP:
        import resource

        with contextlib.suppress(Exception):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for our own death
        with contextlib.suppress(Exception):
            signal.signal(signum, signal.SIG_DFL)  # (SIGKILL cannot be caught: nothing to do)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
    os._exit(status & 0xFF)


def fork_helper(body: Callable[[ReadyPipe], int], keep: tuple[int, ...] = ()) -> int:
    """See the module docstring."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        ready = ReadyPipe(write_end)
        try:
            low = 3
            for fd in sorted({*keep, write_end}):
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, os.sysconf("SC_OPEN_MAX"))
            os.setsid()
            status = body(ready)
        except BaseException as exc:  # nothing may escape a forked child
            if ready.open:
                ready.error(str(exc))
            elif ready.sent_ok:  # before "ok" the parent printed the error already
                log.error("%s", exc)
        finally:
            if ready.open:
                ready.error("the helper ended before it was ready")
            exit_like(status)
    os.close(write_end)
    report = b""
    while chunk := os.read(read_end, MAX_REPORT):
        report += chunk
    os.close(read_end)
    if report != b"ok":
        os.waitpid(pid, 0)
        raise RunvmError(report.decode(errors="replace").removeprefix("error: ") or "helper died")
    return pid
