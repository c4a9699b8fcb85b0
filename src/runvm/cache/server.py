"""`runvm cache serve`: the pool behind a unix socket (root only, 0600).

Each connection carries one request (see :mod:`runvm.cache.wire`), read within
``READ_TIMEOUT`` seconds; the requesting process (SO_PEERCRED) is the one a taken VM's lease
is tied to. A bad request gets an error reply; nothing a client sends stops the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
from pathlib import Path
from typing import Any

from runvm.cache import wire
from runvm.cache.pool import CacheMiss, Pool
from runvm.errors import RunvmError

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0


def _peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


async def _read_line(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await loop.sock_recv(sock, wire.LINE_MAX + 1)
        if not chunk:
            break
        data += chunk
        if len(data) > wire.LINE_MAX:
            raise wire.WireError(f"request longer than {wire.LINE_MAX} bytes")
    return data.rstrip(b"\n")


async def _answer(pool: Pool, message: dict[str, Any], peer: int) -> tuple[dict[str, Any], int]:
    op = message.get("op")
    if op == "status":
        return {"ok": True, **pool.status()}, -1
    if op == "take":
        run_dir = message.get("run_dir")
        if not isinstance(run_dir, str):
            raise wire.WireError("take: 'run_dir' must be a string")
        pid, pidfd, vm_id = await pool.take(Path(run_dir), message.get("key"), peer)
        return {"ok": True, "pid": pid, "vm": vm_id}, pidfd
    raise wire.WireError(f"unknown op {op!r}")


async def _serve_one(pool: Pool, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    pidfd = -1
    with sock:
        try:
            line = await asyncio.wait_for(_read_line(loop, sock), READ_TIMEOUT)
            reply, pidfd = await _answer(pool, wire.decode(line), _peer_pid(sock))
        except (wire.WireError, CacheMiss, RunvmError) as exc:
            reply = {"ok": False, "error": str(exc)}
        except TimeoutError:
            reply = {"ok": False, "error": f"no request within {READ_TIMEOUT:g} s"}
        try:
            data = wire.encode(reply)
            if pidfd >= 0:
                socket.send_fds(sock, [data], [pidfd])
            else:
                await loop.sock_sendall(sock, data)
        except OSError as exc:
            log.warning("cache: reply not delivered: %s", exc)
        finally:
            if pidfd >= 0:
                os.close(pidfd)


async def serve(pool: Pool, path: Path) -> None:
    """Recover, fill and answer until SIGTERM or SIGINT; then close the pool."""
    loop = asyncio.get_running_loop()
    await pool.recover()
    await pool.key()  # fail early on a config that cannot boot
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    listener.setblocking(False)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    filler = asyncio.ensure_future(pool.fill())
    clients: set[asyncio.Task[None]] = set()

    async def accept() -> None:
        while True:
            sock, _ = await loop.sock_accept(listener)
            sock.setblocking(False)
            task = asyncio.ensure_future(_serve_one(pool, sock))
            clients.add(task)
            task.add_done_callback(clients.discard)

    acceptor = asyncio.ensure_future(accept())
    log.info("cache: serving on %s, keeping %d VMs ready", path, pool.size)
    try:
        await stop.wait()
    finally:
        for task in (acceptor, filler, *clients):
            task.cancel()
        for task in (acceptor, filler, *clients):
            with contextlib.suppress(BaseException):
                await task
        listener.close()
        path.unlink(missing_ok=True)
        await pool.close()
