"""The sandbox's side of the VM cache: ask the daemon for a ready VM matching this config.

Contract of :func:`take`: a :class:`Handed` VM (its QEMU pid and pidfd, its run directory
already moved to the sandbox's, where the sandbox takes it over) or None when there is no
daemon, no ready VM or none that matches; the reason is logged. It never raises for a cache
problem: the caller then boots as usual.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runvm.cache import wire
from runvm.config import RunvmConfig

log = logging.getLogger(__name__)

TAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Handed:
    pid: int
    pidfd: int
    vm_id: str  # the pool's name for it (QEMU's ``-name``)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def request(path: Path, message: dict[str, Any], timeout: float) -> tuple[dict[str, Any], int]:
    """One exchange with the daemon: (reply, pidfd or -1). OSError or WireError on failure."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(wire.encode(message))
        data = b""
        fds: list[int] = []
        while not data.endswith(b"\n") and len(data) <= wire.LINE_MAX:
            chunk, got, _, _ = socket.recv_fds(sock, wire.LINE_MAX + 1, wire.MAX_FDS)
            fds += got
            if not chunk:
                break
            data += chunk
        try:
            reply = wire.decode(data.rstrip(b"\n"))
            if len(fds) > 1:
                raise wire.WireError(f"{len(fds)} file descriptors in one reply")
        except wire.WireError:
            _close_all(fds)
            raise
        return reply, (fds[0] if fds else -1)


async def take(config: RunvmConfig, run_dir: Path, key: dict[str, Any]) -> Handed | None:
    """See the module docstring; ``run_dir`` is where the VM's directory is to be moved,
    ``key`` what the VM must have been made with (the runtime's ``pooled.cache_key``)."""
    path = Path(config.cache.socket)
    message = {"op": "take", "run_dir": str(run_dir), "key": key}
    try:
        reply, pidfd = await asyncio.to_thread(request, path, message, TAKE_TIMEOUT)
    except (OSError, wire.WireError) as exc:
        log.info("cache: no VM from %s (%s); booting without it", path, exc)
        return None
    pid, vm_id = reply.get("pid"), reply.get("vm")
    if reply.get("ok") is not True or pidfd < 0 or not isinstance(pid, int):
        if pidfd >= 0:
            os.close(pidfd)
        log.info("cache: no VM (%s); booting without it", reply.get("error", "malformed reply"))
        return None
    return Handed(pid, pidfd, str(vm_id))
