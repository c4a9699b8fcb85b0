"""``runvm ksm serve``: the throttler behind a unix socket; any line received is a kick.

Sandboxes kick it as they start (:func:`kick`, best effort: no daemon, no wait). SIGTERM or
SIGINT restore the original KSM settings before exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path

from runvm.ksm.throttler import Throttler

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/runvm/ksm.sock")
MAX_LINE = 64


async def serve(path: Path, throttler: Throttler) -> None:
    """Serve kicks on ``path`` until SIGTERM/SIGINT; the socket is removed at the end."""
    wake = asyncio.Event()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while await reader.readline():
                throttler.kick()
                wake.set()
        writer.close()

    path.parent.mkdir(parents=True, exist_ok=True)
    # Bound under another name, made 0600, then renamed into place: nobody else ever sees
    # the socket with its default mode.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        staging.unlink(missing_ok=True)
        sock.bind(str(staging))
        os.chmod(staging, 0o600)
        os.replace(staging, path)
    except BaseException:
        sock.close()
        staging.unlink(missing_ok=True)
        raise
    server = await asyncio.start_unix_server(client, sock=sock, limit=MAX_LINE)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, RuntimeError):  # only possible on the main thread
            loop.add_signal_handler(sig, stop.set)
    if not throttler.available:
        log.warning("ksm: /sys/kernel/mm/ksm is absent or read-only: kicks change nothing")
    try:
        async with server:
            while not stop.is_set():
                due = throttler.tick()
                timeout = None if due is None else max(0.0, due - throttler.clock())
                wake.clear()
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
    finally:
        throttler.restore()
        path.unlink(missing_ok=True)


def kick(path: Path = DEFAULT_SOCKET) -> bool:
    """Tell a running throttler a sandbox starts; False if none listens. Never blocks long."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.connect(str(path))
            sock.sendall(b"kick\n")
        except OSError:
            return False
    return True
