"""Relaying a container process's stdio between host file descriptors and the agent.

Contract: :func:`pump_output` copies one guest stream to ``fd`` until the agent reports end
of stream; :func:`pump_input` copies ``fd`` to the process's stdin until EOF, then closes the
guest stdin. Host fds are used as they are (never switched to non-blocking, since they may
be shared with other processes): blocking reads run in a daemon thread, writes in a worker.
With ``owned=True`` the fd is ours alone (a FIFO or pipe the shim opened): it is switched to
non-blocking and served by the event loop, so a relay can always be cancelled.
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


async def _wait_fd(fd: int, writer: bool) -> None:
    """Wait until ``fd`` is ready. The fd stays registered with the loop until this returns
    or its cancellation is done: close it only after that, or a reused fd number loses its
    new registration."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writer:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if writer else loop.remove_reader)(fd)


async def write_nonblocking(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking fd, waiting in the loop when it is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _wait_fd(fd, writer=True)


async def _readable_or_stopped(fd: int, stop: asyncio.Event) -> None:
    """Wait until ``fd`` is readable or ``stop`` is set. The fd is unregistered before this
    returns, even when cancelled (so closing it afterwards is always safe)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake(*_: object) -> None:
        if not ready.done():
            ready.set_result(None)

    stopping = asyncio.ensure_future(stop.wait())
    stopping.add_done_callback(wake)
    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
        stopping.cancel()


async def pump_owned_input(
    agent: AgentClient, cid: str, eid: str, fd: int, stop: asyncio.Event
) -> None:
    """Copy an owned fd (the stdin FIFO) into the process's stdin until EOF or ``stop``;
    after ``stop`` whatever is already in the fd is still copied, then the guest stdin is
    closed. So no byte written before ``CloseIO`` is lost."""
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                if stop.is_set():
                    break
                await _readable_or_stopped(fd, stop)
                continue
            except OSError:
                break
            if not data:
                break
            await agent.write_stdin(cid, eid, data)
        await agent.close_stdin(cid, eid)
    except (RpcError, AgentError):
        return  # the process is gone or its stdin was closed


async def pump_output(
    agent: AgentClient, cid: str, eid: str, stream: str, fd: int, owned: bool = False
) -> int:
    """Copy ``stream`` (stdout/stderr) of a guest process to ``fd``; returns bytes copied."""
    if owned:
        os.set_blocking(fd, False)
    total = 0
    broken = False
    while True:
        data = await agent.read_stream(stream, cid, eid)
        if not data:
            return total
        total += len(data)
        if not broken:
            try:
                if owned:
                    await write_nonblocking(fd, data)
                else:
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
