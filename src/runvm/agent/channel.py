"""The agent's end of the host link: a virtio-serial port or a vsock listener.

virtio-serial facts this code is shaped by (drivers/char/virtio_console.c): without udev
there is no /dev/virtio-ports/NAME, so the port is found through
/sys/class/virtio-ports/*/name; only one process may hold the port open; data the host sends
while the port is closed, or that is still queued when it is closed, is discarded. So the
agent opens the port once and keeps it open for its whole life. While no host is connected a
read returns EOF at once and poll() reports POLLHUP; the driver raises SIGIO (``O_ASYNC``)
when the host connects or hangs up. Each host connection is one ttrpc session: a session
starts when the host is connected and ends at the EOF that follows its hang-up; replies
still queued then are dropped, never sent to the next host. A host that hangs up and
another that connects before the agent reads again leave no EOF at all (the driver handles
both events first): the next client's first stream id, reused, marks that boundary instead
(``Server.serve_connection``'s ``on_restart``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import select
import signal
import socket
import time
from pathlib import Path
from typing import Any

from runvm.ttrpc import Server

log = logging.getLogger("runvm.agent")

VSOCK_PORT = 1024
OPEN_PAUSE = 0.1  # seconds between attempts to open a port that is not free yet
HOST_RECHECK = 1.0  # seconds between checks for a host, should a SIGIO be missed
READ_LIMIT = 8 << 20
READ_CHUNK = 64 << 10
READ_BURST = 16  # reads per wake-up at most (the driver returns one port buffer a read)
WRITE_HIGH = 256 << 10  # queued reply bytes above which writers wait in drain()


def find_port(name: str, timeout: float = 10.0) -> str:
    """The /dev path of the virtio-serial port called ``name``; waits for its driver."""
    deadline = time.monotonic() + timeout
    root = Path("/sys/class/virtio-ports")
    while True:
        for entry in sorted(root.glob("*")) if root.exists() else []:
            try:
                if (entry / "name").read_text().strip() == name:
                    dev = f"/dev/{entry.name}"
                    if os.path.exists(dev):
                        return dev
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"virtio-serial port {name!r} did not appear in {timeout:g} s")
        time.sleep(0.01)


def host_connected(fd: int) -> bool:
    """Whether a host holds the other end of the port (no POLLHUP)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLOUT)
    return not any(events & select.POLLHUP for _, events in poller.poll(0))


class PortSession(asyncio.Transport):
    """One host session on an open port fd, which it never closes.

    Each write() is one frame. A frame is never torn: once its first byte is written, the
    rest follows to whichever host reads next (QEMU, too, keeps what a gone host did not
    read for the next one). Frames not started are dropped when the host hangs up and by
    :meth:`drop_unsent`. A started frame left unfinished when the session ends is its
    :attr:`carry`, for the next session to write first.

    Ends (``connection_lost``) at EOF (the driver reports it once the old host's bytes are
    all read), on a read or write error, and on close() or abort().
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        protocol: asyncio.Protocol,
        carry: bytes = b"",
    ) -> None:
        super().__init__()
        self._loop = loop
        self._fd = fd
        self._protocol = protocol
        self._buffer = bytearray()
        self._frames: collections.deque[int] = collections.deque()  # lengths, in _buffer
        self._started = False  # the first frame in _buffer is partly written
        self._ended = False
        self._reading = False
        self._writing_paused = False
        self.carry = b""
        self.done: asyncio.Future[Exception | None] = loop.create_future()  # why it ended
        protocol.connection_made(self)
        if carry:
            self._queue(carry, started=True)
        self.resume_reading()

    # reading
    def _read_ready(self) -> None:
        for _ in range(READ_BURST):
            try:
                data = os.read(self._fd, READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._end(exc)
                return
            if not data:
                self.pause_reading()
                self._protocol.eof_received()
                self._end(None)
                return
            self._protocol.data_received(data)
            if not self._reading or self._ended:  # paused by the protocol
                return

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and not self._ended:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reading = True

    # writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._ended or not data:
            return
        if self._buffer:
            self._queue(data, started=False)
            return
        try:
            written = os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            if not host_connected(self._fd):
                return  # a reply for a host that is gone: dropped whole
            written = 0
        except OSError as exc:
            self._end(exc)
            return
        if written < len(data):
            self._queue(memoryview(data)[written:], started=written > 0)

    def _queue(self, data: bytes | bytearray | memoryview, started: bool) -> None:
        if not self._buffer:
            self._loop.add_writer(self._fd, self._write_ready)
            self._started = started
        self._buffer += data
        self._frames.append(len(data))
        if len(self._buffer) > WRITE_HIGH and not self._writing_paused:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        try:
            written = os.write(self._fd, self._buffer)
        except (BlockingIOError, InterruptedError):
            if not host_connected(self._fd):  # poll reports the hang-up as writable
                self._loop.remove_writer(self._fd)  # no busy loop; the EOF ends the session
                self._drop(keep_started=True)
            return
        except OSError as exc:
            self._end(exc)
            return
        del self._buffer[:written]
        while written and written >= self._frames[0]:
            written -= self._frames.popleft()
            self._started = False
        if written:
            self._frames[0] -= written
            self._started = True
        if not self._buffer:
            self._loop.remove_writer(self._fd)
        self._maybe_resume_writing()

    def drop_unsent(self) -> None:
        """Forget the frames not started yet (replies owed to a host that is gone)."""
        self._drop(keep_started=True)

    def _drop(self, keep_started: bool) -> None:
        keep = self._frames[0] if keep_started and self._started and self._frames else 0
        del self._buffer[keep:]
        self._frames = collections.deque([keep] if keep else [])
        self._started = bool(keep)
        if not self._buffer:
            self._loop.remove_writer(self._fd)
        self._maybe_resume_writing()

    def _maybe_resume_writing(self) -> None:
        if self._writing_paused and len(self._buffer) <= WRITE_HIGH // 4:
            self._writing_paused = False
            self._protocol.resume_writing()

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def can_write_eof(self) -> bool:
        return False

    # ending
    def is_closing(self) -> bool:
        return self._ended

    def close(self) -> None:
        self._end(None)

    def abort(self) -> None:
        self._end(None)

    def _end(self, exc: Exception | None) -> None:
        if self._ended:
            return
        self._ended = True
        self.pause_reading()
        self._drop(keep_started=True)
        self.carry = bytes(self._buffer)
        self._buffer.clear()
        self._frames.clear()
        self._loop.remove_writer(self._fd)
        self._loop.call_soon(self._protocol.connection_lost, exc)
        self.done.set_result(exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"fd": self._fd}.get(name, default)


def _open_port(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    except OSError:
        os.close(fd)
        raise
    return fd


def _set_async(fd: int, on: bool) -> None:
    """SIGIO for host connects (and data) on, while no session reads the port; off after."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_ASYNC if on else flags & ~os.O_ASYNC)


async def _until_host(fd: int, changed: asyncio.Event) -> None:
    _set_async(fd, True)
    try:
        while True:
            changed.clear()
            if host_connected(fd):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), HOST_RECHECK)
    finally:
        _set_async(fd, False)


async def serve_virtio_serial(server: Server, path: str) -> None:
    """Serve ttrpc sessions on the port forever, one per host connection, holding it open.
    A port that cannot be opened yet is retried, never given up."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    loop.add_signal_handler(signal.SIGIO, changed.set)
    while True:
        try:
            fd = _open_port(path)
            break
        except OSError as exc:
            log.warning("opening %s: %s", path, exc)
            await asyncio.sleep(OPEN_PAUSE)
    carry = b""
    while True:
        await _until_host(fd, changed)
        reader = asyncio.StreamReader(limit=READ_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        session = PortSession(loop, fd, protocol, carry)
        writer = asyncio.StreamWriter(session, protocol, reader, loop)
        try:
            await server.serve_connection(reader, writer, on_restart=session.drop_unsent)
        except Exception:
            log.exception("session on %s failed", path)
        finally:
            session.abort()
        carry = session.carry
        if session.done.result() is not None:  # a port error: do not spin on it
            log.warning("session on %s ended: %s", path, session.done.result())
            await asyncio.sleep(OPEN_PAUSE)


async def serve_vsock(server: Server, port: int = VSOCK_PORT) -> None:
    """Serve ttrpc on AF_VSOCK ``port``; each accepted connection is a session."""
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.bind((socket.VMADDR_CID_ANY, port))
    srv = await asyncio.start_server(server.serve_connection, sock=sock, limit=READ_LIMIT)
    async with srv:
        await srv.serve_forever()
