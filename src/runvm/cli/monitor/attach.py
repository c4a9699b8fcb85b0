"""Wiring a guest process's stdio to this host process's fds (shared by monitor and exec).

Contract of :func:`attach`: starts relaying the process's stdout (and stderr, without a
terminal) to fds 1 and 2 — or to a terminal: a new pty whose master went to
``console_socket``, or, for a foreground command, fd 0 itself switched to raw mode — and fd 0
(or the terminal) to its stdin. :meth:`Attached.drain` waits for the output to end;
:meth:`Attached.close` stops the relay and restores the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from runvm.cli.monitor import console
from runvm.errors import AgentError, RpcError, RunvmError
from runvm.protocol.client import AgentClient
from runvm.runtime.iorelay import pump_input, pump_output

# Signals a host-side stand-in (monitor, exec helper, `run`) passes on to its guest process.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)  # fmt: skip
DRAIN_TIMEOUT = 5.0  # how long output may still flow after the process exited


def is_devnull(fd: int) -> bool:
    try:
        st, null = os.fstat(fd), os.stat(os.devnull)
    except OSError:
        return True
    return (st.st_dev, st.st_ino) == (null.st_dev, null.st_ino)


@dataclass
class Attached:
    agent: AgentClient
    container_id: str
    exec_id: str
    tty_fd: int | None = None
    outputs: list[asyncio.Future[int]] = field(default_factory=list)
    tasks: list[asyncio.Future[Any]] = field(default_factory=list)

    async def resize(self) -> None:
        """Copy the host terminal's size to the guest terminal."""
        if self.tty_fd is None:
            return
        with contextlib.suppress(OSError, RpcError, AgentError):
            size = os.get_terminal_size(self.tty_fd)
            await self.agent.tty_win_resize(self.container_id, self.exec_id, size.lines,
                                            size.columns)  # fmt: skip

    def start_relay(self, terminal: bool, stdin_open: bool) -> None:
        cid, eid = self.container_id, self.exec_id
        out = self.tty_fd if self.tty_fd is not None else 1
        streams = [("stdout", out)] if terminal else [("stdout", out), ("stderr", 2)]
        self.outputs = [
            asyncio.ensure_future(pump_output(self.agent, cid, eid, name, fd))
            for name, fd in streams
        ]
        if stdin_open:
            fd = self.tty_fd if self.tty_fd is not None else 0
            self.tasks.append(asyncio.ensure_future(pump_input(self.agent, cid, eid, fd)))

    async def drain(self, timeout: float) -> None:
        """Wait for the output to end; a relay that failed (VM gone) counts as ended."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self.outputs, return_exceptions=True), timeout)

    def close(self) -> None:
        for task in (*self.tasks, *self.outputs):
            task.cancel()
        if self.tty_fd == 0:
            console.restore(0)


def open_terminal(console_socket: str | None, foreground_tty: bool) -> int:
    """The host end of a container terminal (see the module docstring)."""
    if console_socket:
        slave = console.send_new_pty(console_socket)
        # As with runc, the caller's stdio is not the process's: let go of it, or a caller
        # that reads this command's output (containerd's shim) would wait for our exit.
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        return slave
    if not foreground_tty:
        raise RunvmError("cannot allocate tty if runvm will detach without setting console socket")
    console.make_raw(0)
    return 0
