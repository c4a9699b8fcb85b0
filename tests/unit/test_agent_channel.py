"""The agent's port session (agent/channel.PortSession) over a unix socketpair standing in
for the virtio-serial port: the session never closes the fd, ends at the host's EOF, and
drops what it could not send instead of carrying it into the next session."""

from __future__ import annotations

import asyncio
import os
import socket

from runvm.agent import channel
from runvm.ttrpc import Server


async def _session(
    fd: int,
) -> tuple[channel.PortSession, asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    session = channel.PortSession(loop, fd, protocol)
    return session, reader, asyncio.StreamWriter(session, protocol, reader, loop)


def test_session_relays_both_ways_and_ends_at_eof_leaving_the_fd_open() -> None:
    async def main() -> None:
        agent, host = socket.socketpair()
        agent.setblocking(False)
        session, reader, writer = await _session(agent.fileno())
        host.sendall(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 2) == b"ping"
        writer.write(b"pong")
        await writer.drain()
        assert host.recv(4) == b"pong"
        assert channel.host_connected(agent.fileno())
        host.close()
        assert await asyncio.wait_for(reader.read(), 2) == b""
        await asyncio.wait_for(session.done, 2)
        await asyncio.wait_for(writer.wait_closed(), 2)
        assert not channel.host_connected(agent.fileno())
        writer.write(b"late")  # dropped, no error
        os.fstat(agent.fileno())  # still open: the port is never closed by a session
        agent.close()

    asyncio.run(main())


def test_unsent_replies_are_dropped_when_the_host_is_gone() -> None:
    async def main() -> None:
        agent, host = socket.socketpair()
        agent.setblocking(False)
        agent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        session, _, writer = await _session(agent.fileno())
        writer.write(b"x" * (1 << 20))  # far more than the socket takes
        assert session.get_write_buffer_size() > 0
        host.close()
        await asyncio.wait_for(session.done, 2)
        assert session.get_write_buffer_size() == 0 and session.is_closing()
        agent.close()

    asyncio.run(main())


def test_a_ttrpc_server_serves_one_session_per_connection_on_the_same_fd() -> None:
    async def main() -> None:
        agent, host = socket.socketpair()
        agent.setblocking(False)
        session, reader, writer = await _session(agent.fileno())
        served = asyncio.ensure_future(Server().serve_connection(reader, writer))
        host.close()
        await asyncio.wait_for(served, 2)
        assert session.done.done()
        os.fstat(agent.fileno())
        agent.close()

    asyncio.run(main())
