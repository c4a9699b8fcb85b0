"""Relaying a container process's stdio between host file descriptors and the agent.

Contract: :func:`pump_output` copies one guest stream to ``fd`` until the agent reports end
of stream; :func:`pump_input` copies ``fd`` to the process's stdin until EOF, then closes the
guest stdin. Host fds are used as they are (never switched to non-blocking, since they may
be shared with other processes): blocking reads run in a daemon thread, writes in a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading

from runvm.errors import AgentError, RpcError
from runvm.protocol.client import AgentClient

CHUNK = 64 * 1024


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def pump_output(agent: AgentClient, cid: str, eid: str, stream: str, fd: int) -> int:
    """Copy ``stream`` (stdout/stderr) of a guest process to ``fd``; returns bytes copied."""
    total = 0
    broken = False
    while True:
        data = await agent.read_stream(stream, cid, eid)
        if not data:
            return total
        total += len(data)
        if not broken:
            try:
                await asyncio.to_thread(_write_all, fd, data)
            except OSError:
                broken = True  # keep draining so the process never blocks on a full pipe


def _reader(fd: int, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, CHUNK)
        except OSError:
            data = b""
        try:
            loop.call_soon_threadsafe(queue.put_nowait, data)
        except RuntimeError:  # the loop is gone: the relay is over
            return
        if not data:
            return


async def pump_input(agent: AgentClient, cid: str, eid: str, fd: int) -> None:
    """Copy host ``fd`` into the process's stdin; EOF closes the guest stdin."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=0)
    loop = asyncio.get_running_loop()
    threading.Thread(target=_reader, args=(fd, loop, queue), daemon=True).start()
    try:
        while data := await queue.get():
            await agent.write_stdin(cid, eid, data)
    except (RpcError, AgentError):
        return  # the process is gone or its stdin was closed
    with contextlib.suppress(RpcError, AgentError):
        await agent.close_stdin(cid, eid)
