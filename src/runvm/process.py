"""The one lifecycle helper for child processes (QEMU, virtiofsd, hooks).

Contract:
- :meth:`Child.launch` starts ``argv`` with stdout and stderr appended to ``log_path``
  (or discarded; with ``stamped`` they pass through this process, which writes each line
  with its time and caps the file: :mod:`runvm.logfile`), optionally dying with its parent
  (``PR_SET_PDEATHSIG``), so that a ``kill -9`` of the owner never leaves the child behind.
- :meth:`Child.wait_ready` polls a probe until it returns true; if the child exits first or
  the deadline passes it stops the child and raises :class:`LaunchError` carrying the argv,
  the exit code and the tail of the log.
- :meth:`Child.stop` ends the child (SIGTERM, then SIGKILL after ``grace`` seconds) and always
  reaps it; calling it again is harmless. ``async with`` guarantees it runs.
- :class:`ForeignProcess` is the same interface for a process this one did not start (a VM
  handed over by the cache daemon), held by a pidfd: its exit is seen, its status is not
  (``UNKNOWN_STATUS``); its parent reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runvm import files
from runvm.errors import LaunchError

_PR_SET_PDEATHSIG = 1
LOG_TAIL_BYTES = 4096


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def read_tail(path: Path | None, limit: int = LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a log file as text ("" if there is none)."""
    if path is None:
        return ""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class ChildSpec:
    """What to run. ``pass_fds`` are inherited by the child under the same numbers."""

    name: str
    argv: Sequence[str]
    log_path: Path | None = None
    pass_fds: Sequence[int] = ()
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    die_with_parent: bool = True
    new_session: bool = True
    umask: int = 0o077  # what a helper creates is its owner's alone; -1 keeps the caller's
    stdin_devnull: bool = True
    stdin_fd: int | None = None  # takes precedence over stdin_devnull
    executable: str | None = None  # program to run when argv[0] is only its name (execv)
    # Run as this uid/gid with these supplementary groups instead of the caller's (None: keep)
    user: int | None = None
    group: int | None = None
    extra_groups: Sequence[int] | None = None
    # Its output goes through this process into log_path as stamped lines, capped at
    # STAMPED_CAP (one older file kept); else the child writes the file itself.
    stamped: bool = False


STAMPED_CAP = 1 << 20


@dataclass
class Child:
    """A running child process; see the module docstring for the contract."""

    spec: ChildSpec
    proc: asyncio.subprocess.Process
    _stopped: bool = field(default=False, init=False)
    _copy: asyncio.Task[None] | None = field(default=None, init=False)

    @classmethod
    async def launch(cls, spec: ChildSpec) -> Child:
        piped = spec.stamped and spec.log_path is not None
        log = files.open_append(spec.log_path) if spec.log_path and not piped else None
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                executable=spec.executable,
                stdin=spec.stdin_fd
                if spec.stdin_fd is not None
                else (asyncio.subprocess.DEVNULL if spec.stdin_devnull else None),
                stdout=(
                    asyncio.subprocess.PIPE if piped else log if log else asyncio.subprocess.DEVNULL
                ),
                stderr=asyncio.subprocess.STDOUT if log or piped else asyncio.subprocess.DEVNULL,
                pass_fds=tuple(spec.pass_fds),
                env=dict(spec.env) if spec.env is not None else None,
                cwd=spec.cwd,
                start_new_session=spec.new_session,
                umask=spec.umask,
                user=spec.user,
                group=spec.group,
                extra_groups=spec.extra_groups,
                preexec_fn=_die_with_parent if spec.die_with_parent else None,
            )
        except OSError as exc:
            raise LaunchError(
                f"{spec.name} could not be started: {exc.strerror}", spec.argv, None
            ) from exc
        finally:
            if log:
                log.close()
        child = cls(spec, proc)
        if piped:
            assert spec.log_path is not None and proc.stdout is not None
            child._copy = asyncio.ensure_future(_copy_stamped(proc.stdout, spec.log_path))
        return child

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def log_tail(self) -> str:
        return files.unstamp(read_tail(self.spec.log_path))

    def failure(self, message: str) -> LaunchError:
        return LaunchError(
            f"{self.spec.name} {message}", self.spec.argv, self.proc.returncode, self.log_tail()
        )

    async def wait_ready(
        self,
        probe: Callable[[], Awaitable[bool]] | Callable[[], bool],
        timeout: float,
        interval: float = 0.02,
    ) -> None:
        """Poll ``probe`` until true; on exit or deadline stop the child and raise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc.returncode is not None:
                await self._drained()
                raise self.failure("exited before it was ready")
            result = probe()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            if loop.time() >= deadline:
                await self.stop()
                raise self.failure(f"was not ready within {timeout:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), interval)

    async def wait(self) -> int:
        code = await self.proc.wait()
        await self._drained()
        return code

    async def _drained(self, timeout: float = 2.0) -> None:
        """Let the copy of a stamped child's output reach its end (its last words are read
        from the file), unless something it left running still holds the pipe."""
        if self._copy is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._copy), timeout)

    async def stop(self, grace: float = 3.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` s; always reaps. Returns the exit code."""
        if self.proc.returncode is None and not self._stopped:
            self._stopped = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
        return await self.wait()

    async def __aenter__(self) -> Child:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _copy_stamped(stream: asyncio.StreamReader, path: Path) -> None:
    """A child's output into ``path`` as stamped lines, until every writer closed it."""
    sink = files.StampedLog(path, STAMPED_CAP)
    try:
        while chunk := await stream.read(65536):
            sink.write(chunk)
    finally:
        sink.close()


UNKNOWN_STATUS = 255  # a foreign process's exit status is its parent's to know


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot; with the pid, its identity), or None
    if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def describe_exit(code: int) -> str:
    """A child's exit as people say it: ``exit status 1``, ``killed by SIGKILL``."""
    if code == UNKNOWN_STATUS:
        return "status unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


class ForeignProcess:
    """A process held by its pidfd (not our child); see the module docstring. Any number of
    callers may wait (and be cancelled) at once: one reader on the pidfd serves them all."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self._exited = False
        self._exit: asyncio.Future[None] | None = None

    @property
    def returncode(self) -> int | None:
        if not self._exited:
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            self._exited = bool(poller.poll(0))
        return UNKNOWN_STATUS if self._exited else None

    async def wait(self) -> int:
        if self.returncode is None:
            if self._exit is None:
                loop = asyncio.get_running_loop()
                exit_ = self._exit = loop.create_future()

                def readable() -> None:
                    loop.remove_reader(self.pidfd)
                    if not exit_.done():
                        exit_.set_result(None)

                loop.add_reader(self.pidfd, readable)
            await asyncio.shield(self._exit)
            self._exited = True
        return UNKNOWN_STATUS

    def signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signum)

    async def stop(self, grace: float = 3.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` s; returns once the process is gone."""
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.wait(), grace)
        except TimeoutError:
            self.signal(signal.SIGKILL)
        return await self.wait()

    def close(self) -> None:
        """Let go of the pidfd (after which the process counts as gone); idempotent."""
        if self.pidfd >= 0:
            if self._exit is not None and not self._exit.done():
                asyncio.get_running_loop().remove_reader(self.pidfd)
                self._exit.set_result(None)
            os.close(self.pidfd)
            self.pidfd = -1
            self._exited = True
