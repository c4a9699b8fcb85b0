"""A guest process's stdio on this host process's fds (shared by the monitor and exec).

Contract of :func:`attach`: the runtime process relays its stdout (and stderr, without a
terminal) to fds 1 and 2, or to a terminal: a new pty whose master went to
``console_socket`` (:func:`open_terminal`), or, for a foreground command, fd 0 itself
switched to raw mode; and fd 0 (or the terminal) to its stdin. :func:`restore` puts a
foreground terminal back.
"""

from __future__ import annotations

import contextlib
import os
import signal

from runvm.cli.monitor import console
from runvm.errors import AgentError, RpcError, RunvmError
from runvm.runtime.proc import Process

# Signals a host-side stand-in (monitor, exec helper, `run`) passes on to its guest process.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)  # fmt: skip


def is_devnull(fd: int) -> bool:
    try:
        st, null = os.fstat(fd), os.stat(os.devnull)
    except OSError:
        return True
    return (st.st_dev, st.st_ino) == (null.st_dev, null.st_ino)


def terminal_size(fd: int | None) -> tuple[int, int] | None:
    """(rows, columns) of the host terminal ``fd``; None without one."""
    if fd is None:
        return None
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.lines, size.columns


async def copy_size(process: Process, tty_fd: int | None) -> None:
    """Give the guest terminal of ``process`` the size of host terminal ``tty_fd``."""
    size = terminal_size(tty_fd)
    if size is not None:
        with contextlib.suppress(RpcError, AgentError):
            await process.resize(*size)


def attach(process: Process, tty_fd: int | None, stdin_open: bool) -> None:
    """Relay ``process``'s stdio to this process's fds 0-2, or to terminal ``tty_fd``."""
    out = tty_fd if tty_fd is not None else 1
    stdin = (tty_fd if tty_fd is not None else 0) if stdin_open else None
    process.attach(out, 2, stdin, terminal=tty_fd is not None, owned=False)


def restore(tty_fd: int | None) -> None:
    """Put our own terminal back the way it was (a foreground command used fd 0)."""
    if tty_fd == 0:
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
