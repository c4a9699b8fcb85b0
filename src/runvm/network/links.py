"""Link facts that need no netlink library, in the calling thread's network namespace.

pyroute2 costs each shim and monitor several MiB, so :mod:`runvm.network.netlink` is imported
only for a namespace that has interfaces to plug. :func:`candidates` says whether it has;
:class:`LinkEvents` follows link, address, route and neighbour changes on a plain netlink
socket (what changed is not parsed: a change means "scan again").
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Awaitable, Callable

TAP_SUFFIX = "_rv"  # runvm's taps and macvtaps: <name><ifindex of the pod interface>_rv
LOOPBACK = "lo"

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
          | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE)  # fmt: skip
MAX_READ = 1 << 16
BURST = 0.3  # seconds to let a burst of changes settle before one scan


def candidates() -> list[str]:
    """Names of the links a scan could plug: all but loopback and runvm's own."""
    return [name for _, name in socket.if_nameindex()
            if name != LOOPBACK and not name.endswith(TAP_SUFFIX)]  # fmt: skip


class LinkEvents:
    """A netlink socket subscribed to this namespace's link, address, route and neighbour
    changes (opened on the calling thread, so in its namespace). :meth:`drain` reads what is
    pending without blocking and says whether anything came (a lost burst counts)."""

    def __init__(self) -> None:
        kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        self.sock = socket.socket(socket.AF_NETLINK, kind, NETLINK_ROUTE)
        try:
            self.sock.bind((0, GROUPS))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> bool:
        got = False
        while True:
            try:
                got = bool(self.sock.recv(MAX_READ)) or got
            except BlockingIOError:
                return got
            except OSError as exc:  # ENOBUFS: the kernel dropped events, so something came
                return got or exc.errno == errno.ENOBUFS

    def close(self) -> None:
        self.sock.close()


async def follow(events: LinkEvents, scan: Callable[[], Awaitable[None]]) -> None:
    """Await ``scan`` once after each burst of changes ``events`` reports, until cancelled;
    ``events`` is closed when this returns. ``scan`` handles its own errors."""
    changed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        if events.drain():
            changed.set()

    loop.add_reader(events.fileno(), readable)
    try:
        while True:
            await changed.wait()
            await asyncio.sleep(BURST)
            changed.clear()
            await scan()
    finally:
        loop.remove_reader(events.fileno())
        events.close()
