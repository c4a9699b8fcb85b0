"""One process the agent started and relays: a container's init, an exec or a debug shell."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field

from runvm.agent.stdio import InputStream, OutputStream

log = logging.getLogger("runvm.agent")


@dataclass
class Proc:
    """One process: a container's init or an exec."""

    exec_id: str
    pid: int = 0
    stdin: InputStream | None = None
    stdout: OutputStream | None = None
    stderr: OutputStream | None = None
    pty_master: int | None = None
    status: int | None = None
    exited_at_ns: int = 0
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    def on_exit(self, status: int) -> None:
        log.info("pid %d%s exited (status %d)", self.pid,
                 f" (exec {self.exec_id})" if self.exec_id else "", status)  # fmt: skip
        self.status = status
        self.exited_at_ns = time.time_ns()
        self.exited.set()

    def close(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        if self.pty_master is not None:
            with contextlib.suppress(OSError):
                os.close(self.pty_master)
            self.pty_master = None
