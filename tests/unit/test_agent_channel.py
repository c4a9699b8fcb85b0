"""The agent's port session (agent/channel.PortSession) over a unix socketpair standing in
for the virtio-serial port: the session never closes the fd, ends at the host's EOF, drops
the replies it has not started when the host is gone, and never tears a frame it started."""

from __future__ import annotations

import asyncio
import os
import socket

from runvm.agent import channel
from runvm.ttrpc import Server

BIG = 1 << 20  # far more than the small socket buffer below takes at once


async def _session(
    fd: int, carry: bytes = b""
) -> tuple[channel.PortSession, asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    session = channel.PortSession(loop, fd, protocol, carry)
    return session, reader, asyncio.StreamWriter(session, protocol, reader, loop)


def _pair(small: bool = False) -> tuple[socket.socket, socket.socket]:
    agent, host = socket.socketpair()
    agent.setblocking(False)
    host.setblocking(False)
    if small:
        agent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return agent, host


async def _receive(host: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes, then make sure nothing more comes."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < size:
        got += await asyncio.wait_for(loop.sock_recv(host, size - len(got)), 2)
    try:
        extra = await asyncio.wait_for(loop.sock_recv(host, 1), 0.3)
    except TimeoutError:
        extra = b""
    assert extra == b"", "more than the expected bytes arrived"
    return bytes(got)


def test_session_relays_both_ways_and_ends_at_eof_leaving_the_fd_open() -> None:
    async def main() -> None:
        agent, host = _pair()
        session, reader, writer = await _session(agent.fileno())
        host.sendall(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 2) == b"ping"
        writer.write(b"pong")
        await writer.drain()
        assert await _receive(host, 4) == b"pong"
        assert channel.host_connected(agent.fileno())
        host.close()
        assert await asyncio.wait_for(reader.read(), 2) == b""
        assert await asyncio.wait_for(session.done, 2) is None
        await asyncio.wait_for(writer.wait_closed(), 2)
        assert not channel.host_connected(agent.fileno())
        writer.write(b"late")  # dropped, no error
        os.fstat(agent.fileno())  # still open: the port is never closed by a session
        agent.close()

    asyncio.run(main())


def test_frames_not_started_are_dropped_and_a_started_one_is_finished() -> None:
    async def main() -> None:
        agent, host = _pair(small=True)
        session, _, writer = await _session(agent.fileno())
        first = os.urandom(BIG)
        writer.write(first)  # partly written at once: started
        writer.write(b"second frame, not started")
        assert session.get_write_buffer_size() > 25
        session.drop_unsent()  # as when a new host is seen
        assert 0 < session.get_write_buffer_size() < BIG
        assert await _receive(host, BIG) == first
        assert session.get_write_buffer_size() == 0
        session.abort()
        assert session.carry == b""
        agent.close()
        host.close()

    asyncio.run(main())


def test_a_started_frame_ending_with_its_session_is_finished_by_the_next() -> None:
    async def main() -> None:
        agent, host = _pair(small=True)
        session, _, writer = await _session(agent.fileno())
        frame = os.urandom(BIG)
        writer.write(frame)
        writer.write(b"not started")
        session.abort()
        assert 0 < len(session.carry) < BIG
        await asyncio.wait_for(session.done, 2)
        following, _, _ = await _session(agent.fileno(), session.carry)
        assert await _receive(host, BIG) == frame
        following.abort()
        agent.close()
        host.close()

    asyncio.run(main())


def test_a_ttrpc_server_serves_one_session_per_connection_on_the_same_fd() -> None:
    async def main() -> None:
        agent, host = _pair()
        session, reader, writer = await _session(agent.fileno())
        served = asyncio.ensure_future(Server().serve_connection(reader, writer))
        host.close()
        await asyncio.wait_for(served, 2)
        assert session.done.done()
        os.fstat(agent.fileno())
        agent.close()

    asyncio.run(main())
