"""Opening the host end of the agent channel and waiting for the agent to answer.

Contract of :func:`connect_agent`: returns an :class:`AgentClient` whose version handshake
succeeded within ``boot_timeout`` seconds; raises AgentTimeout when the deadline passes,
AgentError when the VM exits first, VersionMismatch on a version mismatch. Nothing stays
open on failure. Only one request is in flight until the agent answers: virtio-serial does
not drain the host socket while the guest has its port closed, and a flood would block.

A virtio-serial port has no connection boundaries: when a host hangs up and this one connects
before the agent reads again, the agent never sees an EOF, and replies it owed the previous
host come to this one first. So every session starts with the Version handshake on stream 1
(the agent takes a reused stream id for a new host and drops what it still owed the old one),
and until it is answered, replies on other streams are dropped as leftovers (as is a second
answer on stream 1: the previous host's handshake got the same Version from the same agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

from runvm.errors import AgentError, AgentTimeout
from runvm.hypervisor.base import AgentChannelSpec
from runvm.protocol.client import AgentClient
from runvm.ttrpc import Client

VSOCK_PORT = 1024
EXIT_GRACE = 2.0


async def _open(channel: AgentChannelSpec, deadline: float) -> Client:
    loop = asyncio.get_running_loop()
    while True:
        try:
            if channel.kind == "virtio-serial":
                assert channel.socket_path is not None
                return await Client.connect_unix(str(channel.socket_path), leftovers=True)
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (channel.guest_cid, VSOCK_PORT))
            except BaseException:
                sock.close()
                raise
            reader, writer = await asyncio.open_connection(sock=sock)
            return Client(reader, writer)
        except (ConnectionError, FileNotFoundError, TimeoutError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _handshake(channel: AgentChannelSpec, boot_timeout: float, timeout: float) -> AgentClient:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + boot_timeout
    conn = await _open(channel, deadline)
    agent = AgentClient(conn, timeout=timeout)
    try:
        await agent.handshake(timeout=max(0.1, deadline - loop.time()))
    except BaseException:
        await agent.close()
        raise
    return agent


async def connect_agent(
    channel: AgentChannelSpec,
    boot_timeout: float,
    request_timeout: float,
    vm_exited: Callable[[], Awaitable[int]],
) -> AgentClient:
    """See the module docstring."""
    if boot_timeout <= 0:
        raise AgentTimeout("no time left to wait for the agent")
    hello = asyncio.ensure_future(_handshake(channel, boot_timeout, request_timeout))
    died = asyncio.ensure_future(vm_exited())
    try:
        done, _ = await asyncio.wait({hello, died}, return_when=asyncio.FIRST_COMPLETED)
        if hello in done and hello.exception() is not None:
            # A lost connection usually means QEMU is exiting: let it say so first.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(died), EXIT_GRACE)
        if died.done():
            raise AgentError(f"the VM exited (status {died.result()}) before its agent answered")
        return hello.result()
    finally:
        died.cancel()
        if not hello.done():
            hello.cancel()
            with contextlib.suppress(BaseException):
                await hello
        elif hello.exception() is None and died.done():
            await hello.result().close()
