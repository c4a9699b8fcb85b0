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

    def pipes(self, stdin: bool) -> list[int]:
        """Pipes for the process's stdio: their parent ends become its streams; returns the
        child's ends (stdin, /dev/null unless ``stdin``; stdout; stderr), for the caller to
        hand over and then close."""
        in_r, in_w = os.pipe() if stdin else (os.open(os.devnull, os.O_RDONLY), -1)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.stdout, self.stderr = OutputStream(out_r), OutputStream(err_r)
        if in_w >= 0:
            self.stdin = InputStream(in_w)
        return [in_r, out_w, err_w]

    def close(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        if self.pty_master is not None:
            with contextlib.suppress(OSError):
                os.close(self.pty_master)
            self.pty_master = None
