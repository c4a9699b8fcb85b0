"""Zombie reaping for PID 1, with exit statuses routed to whoever waits for a pid.

The agent never uses subprocess/asyncio child watchers: every child is forked by the agent
and reaped here, so a status is never stolen by another waitpid(-1).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

ExitCallback = Callable[[int], None]


def exit_status(wait_status: int) -> int:
    """Container convention: the exit code, or 128+N when killed by signal N."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


class Reaper:
    """Reaps every child on SIGCHLD; calls the callback registered for its pid."""

    def __init__(self) -> None:
        self._watch: dict[int, ExitCallback] = {}
        self._early: dict[int, int] = {}

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def watch(self, pid: int, callback: ExitCallback) -> None:
        """Call ``callback(status)`` when ``pid`` exits (at once if it already has)."""
        if pid in self._early:
            callback(self._early.pop(pid))
        else:
            self._watch[pid] = callback

    async def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        fds: Mapping[int, int] | None = None,
        executable: str = "",
    ) -> int:
        """Run ``argv`` (``executable``, if given, instead of ``argv[0]``'s file) to its end;
        its stdio is /dev/null except the ``fds`` it is given (its fd -> ours). Returns its
        exit status (128+N for signal N)."""
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_DUP2, devnull, i) for i in range(3)]
        actions += [(os.POSIX_SPAWN_DUP2, ours, theirs) for theirs, ours in (fds or {}).items()]
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            pid = os.posix_spawn(executable or argv[0], list(argv), dict(env),
                                 file_actions=actions)  # fmt: skip
            self.watch(pid, done.set_result)
        finally:
            os.close(devnull)
        return await done

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = exit_status(status)
            callback = self._watch.pop(pid, None)
            if callback:
                callback(code)
            elif len(self._early) < 4096:
                self._early[pid] = code
