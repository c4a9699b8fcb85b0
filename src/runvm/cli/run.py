"""`runvm run --bundle DIR ID`: create, start and wait for a container in its own VM.

In the foreground the container's stdio is this process's stdio (a pty relay when
``process.terminal`` is true), the signals INT, TERM, HUP, QUIT, USR1, USR2 (and WINCH
without a terminal) are forwarded to the container's init, and the exit status is the
container's: its exit code, or 128+N when its init was killed by signal N.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from pathlib import Path
from typing import Any

from runvm import config as cfg
from runvm.errors import AgentError, RpcError
from runvm.protocol.client import AgentClient
from runvm.runtime.container import Container
from runvm.runtime.iorelay import pump_input, pump_output
from runvm.runtime.sandbox import Sandbox, SandboxOptions

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)  # fmt: skip
DRAIN_TIMEOUT = 5.0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="create and run a container")
    p.add_argument("-b", "--bundle", type=Path, default=Path("."), help="bundle directory")
    p.add_argument("container_id", metavar="ID")
    p.set_defaults(func=run)


def _winsize(fd: int) -> tuple[int, int] | None:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.lines, size.columns


class _Foreground:
    """The stdio and signal plumbing of one foreground container."""

    def __init__(self, agent: AgentClient, container: Container) -> None:
        self.agent = agent
        self.container = container
        self.tasks: set[asyncio.Task[Any]] = set()
        self.saved_tty: list[Any] | None = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _resize(self) -> None:
        size = _winsize(0)
        if size:
            with contextlib.suppress(RpcError, AgentError):
                await self.agent.tty_win_resize(self.container.id, "", *size)

    def _forward(self, signum: int) -> None:
        self._spawn(self._signal(signum))

    async def _signal(self, signum: int) -> None:
        with contextlib.suppress(RpcError, AgentError):
            await self.agent.signal_process(self.container.id, "", signum)

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in FORWARDED:
            loop.add_signal_handler(signum, self._forward, signum)
        if self.container.terminal:
            loop.add_signal_handler(signal.SIGWINCH, lambda: self._spawn(self._resize()))
            if os.isatty(0):
                self.saved_tty = termios.tcgetattr(0)
                tty.setraw(0)
        else:
            loop.add_signal_handler(signal.SIGWINCH, self._forward, signal.SIGWINCH)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (*FORWARDED, signal.SIGWINCH):
            loop.remove_signal_handler(signum)
        if self.saved_tty is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, self.saved_tty)

    async def run(self) -> int:
        cid = self.container.id
        outputs = [asyncio.ensure_future(pump_output(self.agent, cid, "", "stdout", 1))]
        if not self.container.terminal:
            outputs.append(asyncio.ensure_future(pump_output(self.agent, cid, "", "stderr", 2)))
        else:
            await self._resize()
        self._spawn(pump_input(self.agent, cid, "", 0))
        await self.container.start()
        reply = await self.agent.wait_process(cid)
        # Output written before the exit is still in the guest's buffers: drain it all.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*outputs), DRAIN_TIMEOUT)
        return reply.status


async def run_foreground(config: cfg.RunvmConfig, container_id: str, bundle: Path) -> int:
    spec, _ = Container.load(container_id, bundle)  # bad input fails before any VM starts
    hostname = spec.get("hostname") or container_id[:63]
    sandbox = await Sandbox.start(container_id, config, SandboxOptions(hostname=hostname))
    try:
        container = await Container.create(sandbox, container_id, bundle)
        assert sandbox.agent is not None
        fg = _Foreground(sandbox.agent, container)
        fg.install()
        try:
            return await fg.run()
        finally:
            fg.uninstall()
            for task in list(fg.tasks):
                task.cancel()
            await container.remove()
    finally:
        await sandbox.stop()


def run(args: argparse.Namespace) -> int:
    config = cfg.load(args.config)
    code = asyncio.run(run_foreground(config, args.container_id, args.bundle))
    sys.stdout.flush()
    return code
