"""`runvm run [-b DIR] [-d] [--pid-file F] [--console-socket S] [--keep] ID`: create + start.

In the foreground it waits for the container and exits with its status (the exit code, or
128+N when the init was killed by signal N), forwarding INT, TERM, HUP, QUIT, USR1, USR2 and
WINCH to it (through the monitor); with ``process.terminal`` and no console socket this
command's own terminal is the container's. Unless ``--keep``, the container is deleted after.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from typing import Any

from runvm.cli import create, delete, start
from runvm.cli.monitor.attach import FORWARDED


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="create and start a container")
    p.add_argument("-d", "--detach", action="store_true", help="return once started")
    p.add_argument("--keep", action="store_true", help="do not delete the container on exit")
    p.add_argument("--no-subreaper", action="store_true", help="accepted; has no effect")
    create.add_create_flags(p)
    p.set_defaults(func=run)


def forward_signals(pid: int) -> None:
    """From now on the signals we forward go to our child ``pid`` (as soon as it exists:
    one sent once the container runs must never end this command instead)."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (*FORWARDED, signal.SIGWINCH):
        signal.signal(signum, forward)


def wait_forwarding(pid: int) -> int:
    """Wait for our child ``pid``, forwarding signals to it; its status as a container's."""
    forward_signals(pid)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def run(args: argparse.Namespace) -> int:
    terminal_here = not args.detach and not args.console_socket
    pid = create.spawn_monitor(args, foreground_tty=terminal_here)
    if not args.detach:
        forward_signals(pid)  # before start: the container may get its first signal at once
    try:
        start.start(args)
    except BaseException:
        args.force = True
        delete.delete(args)
        raise
    if args.detach:
        return 0
    code = wait_forwarding(pid)
    if not args.keep:
        args.force = True
        delete.delete(args)
    return code
