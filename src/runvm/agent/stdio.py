"""Process I/O in the agent: bounded output buffers and a non-blocking stdin writer.

Contract of :class:`OutputStream`: reads ``fd`` in the event loop into a buffer of at most
``cap`` bytes; when the buffer is full it stops reading (the process blocks on its write:
backpressure, no memory growth). :meth:`read` waits for data and returns up to ``n`` bytes;
``b""`` means end of stream (writer side closed, or EIO from a pty master whose slave is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import termios

BUFFER_CAP = 1 << 20


class OutputStream:
    def __init__(self, fd: int, cap: int = BUFFER_CAP) -> None:
        self.fd = fd
        self.cap = cap
        self._buf = bytearray()
        self._eof = False
        self._reading = False
        self._changed = asyncio.Event()
        os.set_blocking(fd, False)
        self._resume()

    def _resume(self) -> None:
        if not self._reading and not self._eof:
            asyncio.get_running_loop().add_reader(self.fd, self._on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.fd)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.fd, min(65536, self.cap - len(self._buf)))
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            chunk = b""
        if not chunk:
            self._eof = True
            self._pause()
        else:
            self._buf += chunk
            if len(self._buf) >= self.cap:
                self._pause()
        self._changed.set()

    async def read(self, n: int) -> bytes:
        while not self._buf and not self._eof:
            self._changed.clear()
            await self._changed.wait()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        if len(self._buf) < self.cap:
            self._resume()
        return data

    def close(self) -> None:
        self._pause()
        self._eof = True
        self._changed.set()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class InputStream:
    """Writes to a process's stdin without blocking the agent."""

    def __init__(self, fd: int, owns_fd: bool = True) -> None:
        self.fd = fd
        self.owns_fd = owns_fd
        self.closed = False
        os.set_blocking(fd, False)

    async def write(self, data: bytes) -> int:
        if self.closed:
            raise BrokenPipeError(errno.EPIPE, "stdin is closed")
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                done += os.write(self.fd, view[done:])
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(self.fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(self.fd)
        return done

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.owns_fd:
                with contextlib.suppress(OSError):
                    os.close(self.fd)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
