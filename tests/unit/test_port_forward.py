"""Port forwarding's logic: the agent's port streams against a real loopback server, and the
host relay driving them through an in-process stand-in for the agent link."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from runvm.agent.ports import CHUNK, PortService
from runvm.errors import RpcError
from runvm.network.portforward import IPV4, PortForwarder, original_port
from runvm.protocol import agent_pb2 as pb
from runvm.ttrpc import Code


@asynccontextmanager
async def server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1; its port."""
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


async def echo_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo everything, then answer ``bye`` once the peer half-closed, then close."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write(b"bye")
    await writer.drain()
    writer.close()


class InProcessAgent:
    """The four port calls of AgentClient, answered by a PortService in this process."""

    def __init__(self) -> None:
        self.ports = PortService()

    async def open_port(self, port: int, ipv6: bool = False) -> int:
        reply = await self.ports.open_port(pb.OpenPortRequest(port=port, ipv6=ipv6))
        return reply.stream_id

    async def read_port(self, stream_id: int) -> bytes:
        request = pb.ReadPortRequest(stream_id=stream_id, len=CHUNK)
        return (await self.ports.read_port(request)).data

    async def write_port(self, stream_id: int, data: bytes) -> None:
        await self.ports.write_port(pb.WritePortRequest(stream_id=stream_id, data=data))

    async def close_port(self, stream_id: int, write_only: bool = False) -> None:
        request = pb.ClosePortRequest(stream_id=stream_id, write_only=write_only)
        await self.ports.close_port(request)


def test_agent_port_stream_moves_bytes_and_half_closes() -> None:
    async def body() -> None:
        agent = InProcessAgent()
        async with server(echo_until_eof) as port:
            stream = await agent.open_port(port)
            await agent.write_port(stream, b"x" * 200_000)
            got = b""
            while len(got) < 200_000:
                chunk = await agent.read_port(stream)
                assert 0 < len(chunk) <= CHUNK
                got += chunk
            await agent.close_port(stream, write_only=True)
            assert await agent.read_port(stream) == b"bye"
            assert await agent.read_port(stream) == b""
            await agent.close_port(stream)
            with pytest.raises(RpcError) as gone:
                await agent.read_port(stream)
            assert gone.value.code == Code.NOT_FOUND

    asyncio.run(body())


def test_agent_refuses_bad_ports_with_a_reason() -> None:
    async def body() -> None:
        agent = InProcessAgent()
        with pytest.raises(RpcError) as bad:
            await agent.open_port(0)
        assert bad.value.code == Code.INVALID_ARGUMENT and "port 0" in str(bad.value)
        with socket.socket() as unused:  # a port nothing listens on
            unused.bind(("127.0.0.1", 0))
            free = unused.getsockname()[1]
        with pytest.raises(RpcError) as refused:
            await agent.open_port(free)
        assert refused.value.code == Code.UNAVAILABLE and str(free) in str(refused.value)
        with pytest.raises(RpcError) as unknown:
            await agent.write_port(99, b"x")
        assert unknown.value.code == Code.NOT_FOUND

    asyncio.run(body())


def forwarder(agent: InProcessAgent) -> PortForwarder:
    return PortForwarder(agent, None, "test")


async def relay_pair(fwd: PortForwarder, port: int) -> tuple[socket.socket, asyncio.Task[Any]]:
    """A connected pair: the client end, and the relay serving the other end."""
    with socket.socket() as listener:  # TCP, so that a reset is one
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
    served.setblocking(False)
    client.setblocking(False)
    return client, asyncio.ensure_future(fwd._relay(served, port, IPV4))


def test_relay_carries_both_directions_and_half_closes() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        agent = InProcessAgent()
        async with server(echo_until_eof) as port:
            client, relay = await relay_pair(forwarder(agent), port)
            await loop.sock_sendall(client, b"hello " * 50_000)
            client.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := await loop.sock_recv(client, 65536):
                got += chunk
            assert got == b"hello " * 50_000 + b"bye"
            await asyncio.wait_for(relay, 10)
            client.close()
        assert agent.ports._streams == {}  # the guest side was closed too

    asyncio.run(body())


def test_relay_resets_a_connection_the_guest_refuses() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            free = unused.getsockname()[1]
        client, relay = await relay_pair(forwarder(InProcessAgent()), free)
        await asyncio.wait_for(relay, 10)
        with pytest.raises(ConnectionResetError):
            await loop.sock_recv(client, 10)
        client.close()

    asyncio.run(body())


def test_relay_of_a_peer_that_resets_ends_and_frees_the_stream() -> None:
    async def abort(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        writer.transport.abort()  # with linger 0: a reset

    async def body() -> None:
        loop = asyncio.get_running_loop()
        agent = InProcessAgent()
        async with server(abort) as port:
            client, relay = await relay_pair(forwarder(agent), port)
            await loop.sock_sendall(client, b"x")
            await asyncio.wait_for(relay, 10)
            with pytest.raises(ConnectionResetError):
                await loop.sock_recv(client, 10)
            client.close()
        assert agent.ports._streams == {}

    asyncio.run(body())


def test_a_direct_connection_keeps_its_own_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            conn, _ = listener.accept()
            with conn:  # no netfilter redirect here: SO_ORIGINAL_DST names the port itself
                assert original_port(conn, IPV4, port) == port
