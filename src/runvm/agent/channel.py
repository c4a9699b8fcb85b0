"""The agent's end of the host link: a virtio-serial port or a vsock listener.

virtio-serial facts this code is shaped by: without udev there is no /dev/virtio-ports/NAME,
so the port is found through /sys/class/virtio-ports/*/name; read() returns EOF while no host
is connected, so an EOF ends one session and the port is reopened after a short pause; only
one process may hold the port open. Each host connection is one ttrpc session.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path

from runvm.ttrpc import Server

log = logging.getLogger("runvm.agent")

VSOCK_PORT = 1024
REOPEN_PAUSE = 0.1
READ_LIMIT = 8 << 20


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


async def _open_streams(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    reader = asyncio.StreamReader(limit=READ_LIMIT)
    protocol = asyncio.StreamReaderProtocol(reader)
    await loop.connect_read_pipe(lambda: protocol, os.fdopen(fd, "rb", buffering=0))
    wfile = os.fdopen(os.dup(fd), "wb", buffering=0)
    transport, wprotocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, wfile)
    writer = asyncio.StreamWriter(transport, wprotocol, reader, loop)
    return reader, writer


async def serve_virtio_serial(server: Server, path: str) -> None:
    """Serve ttrpc sessions on the port forever, one per host connection. A port that cannot
    be opened yet (the previous session's fd still closing) is retried, never given up."""
    while True:
        try:
            reader, writer = await _open_streams(path)
        except OSError as exc:
            log.warning("reopening %s: %s", path, exc)
            await asyncio.sleep(REOPEN_PAUSE)
            continue
        try:
            await server.serve_connection(reader, writer)
        except Exception:
            log.exception("session on %s failed", path)
        finally:
            writer.close()
        await asyncio.sleep(REOPEN_PAUSE)


async def serve_vsock(server: Server, port: int = VSOCK_PORT) -> None:
    """Serve ttrpc on AF_VSOCK ``port``; each accepted connection is a session."""
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.bind((socket.VMADDR_CID_ANY, port))
    srv = await asyncio.start_server(server.serve_connection, sock=sock, limit=READ_LIMIT)
    async with srv:
        await srv.serve_forever()
