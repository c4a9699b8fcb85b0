"""Port forwarding into the VM: connections to the pod namespace's loopback reach the guest's.

containerd's CRI ``PortForward`` (what ``kubectl port-forward`` uses), like anything else on
the host that enters the pod's network namespace, dials 127.0.0.1:<port> in it, where nothing
of the VM listens: the pod's processes run in the guest. The forwarder listens on one
loopback port in that namespace (IPv4, and IPv6 where the namespace has it), has netfilter
REDIRECT every TCP connection to the namespace's loopback there, reads the port each was
meant for (``SO_ORIGINAL_DST``) and relays it through the agent to the same port on the
guest's loopback (``OpenPort``/``ReadPort``/``WritePort``/``ClosePort``).

Contract: :meth:`PortForwarder.start` returns once the listeners and rules are in place and
raises :class:`PortForwardError` (with nothing left behind) if they cannot be. Each accepted
connection is relayed both ways, half-closes included; a port nothing listens on in the
guest, or more than :data:`MAX_CONNECTIONS` at once, is a reset. :meth:`stop` ends every
relay, closes the listeners and removes the rules; it is idempotent. The rules only touch
the pod's own namespace, which nothing but the host's visitors (containerd) uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from runvm.errors import AgentError, RpcError, RunvmError
from runvm.network import netns

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_CONNECTIONS = 256
BACKLOG = 128
SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>; IP6T_SO_ORIGINAL_DST has the same value
COMMENT = "runvm port forwarding"
CLOSE_TIMEOUT = 5.0  # for ClosePort at the end of a relay (a stuck agent must not hold stop)
IPTABLES_WAIT = "5"  # seconds to wait for the xtables lock


class PortStreams(Protocol):
    """The agent's port calls (an AgentClient): connections to the guest's loopback."""

    async def open_port(self, port: int, ipv6: bool = False) -> int: ...
    async def read_port(self, stream_id: int) -> bytes: ...
    async def write_port(self, stream_id: int, data: bytes) -> None: ...
    async def close_port(self, stream_id: int, write_only: bool = False) -> None: ...


class PortForwardError(RunvmError):
    """The forwarder could not be set up in the pod's namespace."""


@dataclass(frozen=True)
class _Family:
    af: socket.AddressFamily
    loopback: str
    tool: str
    level: int
    addr_size: int  # struct sockaddr_in / sockaddr_in6


IPV4 = _Family(socket.AF_INET, "127.0.0.1", "iptables", socket.SOL_IP, 16)
IPV6 = _Family(socket.AF_INET6, "::1", "ip6tables", socket.IPPROTO_IPV6, 28)


def _rule(family: _Family, op: str, port: int) -> list[str]:
    tool = shutil.which(family.tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if tool is None:
        raise PortForwardError(f"port forwarding needs {family.tool}, which is not installed")
    return [tool, "-w", IPTABLES_WAIT, "-t", "nat", op, "OUTPUT", "-o", "lo", "-p", "tcp",
            "-d", family.loopback, "-m", "comment", "--comment", COMMENT,
            "-j", "REDIRECT", "--to-ports", str(port)]  # fmt: skip


def _iptables(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise PortForwardError(f"{' '.join(argv[:1] + argv[3:])}: {r.stderr.strip()}")


def remove_rules(port: int) -> None:
    """Remove the rules of a forwarder listening on ``port`` from the calling thread's
    namespace (its owner was killed); rules not there are no error."""
    for family in (IPV4, IPV6):
        try:
            _iptables([arg if arg != "-A" else "-D" for arg in _rule(family, "-A", port)])
        except PortForwardError as exc:
            log.debug("%s", exc)


def original_port(conn: socket.socket, family: _Family, listening: int) -> int:
    """The port a redirected connection was meant for; ``listening`` for one made to the
    listener itself (netfilter left it alone)."""
    try:
        raw = conn.getsockopt(family.level, SO_ORIGINAL_DST, family.addr_size)
    except OSError:
        return listening
    return int(struct.unpack_from("!H", raw, 2)[0])


class PortForwarder:
    """The forwarder of one pod (see the module docstring)."""

    def __init__(self, agent: PortStreams, netns_fd: int | None, label: str) -> None:
        self.agent = agent
        self.netns_fd = netns_fd  # None: the pod's namespace is the calling thread's
        self.label = label
        self.port = 0
        self._listeners: list[tuple[socket.socket, _Family]] = []
        self._rules: list[list[str]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._relays = 0
        self._ns: int | None = None

    async def start(self) -> None:
        # The namespace as a descriptor of our own: the worker threads that make the sockets
        # and run iptables visit it (they may have been created in another one).
        if self.netns_fd is None:
            self._ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        else:
            self._ns = os.dup(self.netns_fd)
        try:
            await asyncio.to_thread(self._setup)
        except BaseException:
            await self.stop()
            raise
        for listener, family in self._listeners:
            self._spawn(self._accept(listener, family))
        log.info("%s: port forwarding on loopback port %d", self.label, self.port)

    def _setup(self) -> None:
        with netns.inside(self._ns):
            for family in (IPV4, IPV6):
                sock = socket.socket(family.af, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                try:
                    if family is IPV6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind((family.loopback, self.port))
                    sock.listen(BACKLOG)
                except OSError as exc:
                    sock.close()
                    if family is IPV4:
                        what = f"listen on 127.0.0.1 in the pod's namespace: {exc.strerror}"
                        raise PortForwardError(f"port forwarding: {what}") from exc
                    log.debug("%s: no IPv6 loopback to forward: %s", self.label, exc)
                    continue
                sock.setblocking(False)
                self.port = sock.getsockname()[1]
                self._listeners.append((sock, family))
                rule = _rule(family, "-A", self.port)
                _iptables(rule)
                self._rules.append(rule)

    def _teardown(self) -> None:
        for sock, _ in self._listeners:
            sock.close()
        self._listeners.clear()
        if not self._rules:
            return
        try:
            with netns.inside(self._ns):
                remove_rules(self.port)
        except OSError as exc:  # the namespace may be gone already
            log.debug("%s: rules not removed: %s", self.label, exc)
        self._rules.clear()

    async def stop(self) -> None:
        """End every relay, close the listeners, remove the rules; idempotent."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._ns is not None:
            await asyncio.to_thread(self._teardown)
            os.close(self._ns)
            self._ns = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, listener: socket.socket, family: _Family) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                log.warning("%s: port forwarding stopped accepting: %s", self.label, exc)
                return
            conn.setblocking(False)
            if self._relays >= MAX_CONNECTIONS:
                log.warning("%s: %d forwarded connections already; one refused", self.label,
                            MAX_CONNECTIONS)  # fmt: skip
                _reset(conn)
                continue
            self._spawn(self._relay(conn, original_port(conn, family, self.port), family))

    async def _relay(self, conn: socket.socket, port: int, family: _Family) -> None:
        self._relays += 1
        try:
            try:
                stream = await self.agent.open_port(port, ipv6=family is IPV6)
            except (RpcError, AgentError) as exc:
                log.info("%s: forwarding to guest port %d: %s", self.label, port, exc)
                _reset(conn)
                return
            await self._pump(conn, stream)
        finally:
            self._relays -= 1

    async def _pump(self, conn: socket.socket, stream: int) -> None:
        """Both directions until both ended or one failed; then the guest side is closed
        (which ends a ReadPort still waiting) and the host side too."""
        loop = asyncio.get_running_loop()
        agent = self.agent

        async def to_guest() -> None:
            while data := await loop.sock_recv(conn, CHUNK):
                await agent.write_port(stream, data)
            await agent.close_port(stream, write_only=True)

        async def to_host() -> None:
            while data := await agent.read_port(stream):
                await loop.sock_sendall(conn, data)
            conn.shutdown(socket.SHUT_WR)

        tasks = [asyncio.ensure_future(to_guest()), asyncio.ensure_future(to_host())]
        clean = False
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            clean = all(t.done() and not t.exception() for t in tasks)
        finally:
            with contextlib.suppress(RpcError, AgentError, TimeoutError):
                await asyncio.wait_for(agent.close_port(stream), CLOSE_TIMEOUT)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    log.debug("%s: relay of stream %d: %s", self.label, stream,
                              task.exception())  # fmt: skip
            if clean:
                conn.close()
            else:
                _reset(conn)


def _reset(conn: socket.socket) -> None:
    """Close with a TCP reset: the client learns the port is not served."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
