"""A hostile agent on the same socket type as the real channel (a unix stream socket).

Each case: the fake agent answers the version handshake honestly, then meets the next
request with one hostile behaviour. The host side must fail that call with a clear error
within a bounded time, keep its event loop responsive throughout, and hold no more memory
than one frame's limit.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from runvm.errors import AgentError, AgentTimeout, FrameTooLarge
from runvm.hypervisor.base import AgentChannelSpec
from runvm.protocol import PROTOCOL_VERSION
from runvm.protocol import agent_pb2 as pb
from runvm.protocol.client import AgentClient
from runvm.runtime.agentlink import connect_agent
from runvm.ttrpc import client as ttrpc_client
from runvm.ttrpc import codec
from runvm.ttrpc.codec import Frame, MessageType, encode_frame
from runvm.ttrpc.ttrpc_pb2 import Request, Response

Writer = asyncio.StreamWriter
Behaviour = Callable[[int, Writer], Awaitable[None]]
STALL = 0.5  # the test client's frame stall limit, seconds


def response(stream_id: int, payload: bytes = b"") -> bytes:
    body = Response(payload=payload).SerializeToString()
    return encode_frame(Frame(stream_id, MessageType.RESPONSE, 0, body))


async def garbage(stream: int, w: Writer) -> None:
    w.write(b"\xff" * 10 + os.urandom(4096))


async def oversized(stream: int, w: Writer) -> None:
    w.write(b"\x40\x00\x00\x00" + stream.to_bytes(4, "big") + b"\x02\x00" + bytes(65536))


async def truncated_then_eof(stream: int, w: Writer) -> None:
    w.write(response(stream, bytes(100))[:60])
    w.close()


async def truncated_then_silence(stream: int, w: Writer) -> None:
    w.write(response(stream, bytes(100))[:60])


async def header_half(stream: int, w: Writer) -> None:
    w.write(response(stream)[:5])


async def drip(stream: int, w: Writer) -> None:
    for byte in response(stream, bytes(200)):
        w.write(bytes([byte]))
        await asyncio.sleep(0.05)


async def wrong_stream(stream: int, w: Writer) -> None:
    w.write(response(stream + 1000))


async def even_stream(stream: int, w: Writer) -> None:
    w.write(response(stream + 1))


async def twice(stream: int, w: Writer) -> None:
    w.write(response(stream) + response(stream))
    await asyncio.sleep(0.2)
    w.write(response(stream))


async def unasked_flood(stream: int, w: Writer) -> None:
    for i in range(200_000):
        w.write(response(2 * i + 10_001))
        if i % 256 == 0:
            await w.drain()


async def data_frames(stream: int, w: Writer) -> None:
    w.write(encode_frame(Frame(stream, MessageType.DATA, 0, b"x" * 100)))


async def undecodable_response(stream: int, w: Writer) -> None:
    w.write(encode_frame(Frame(stream, MessageType.RESPONSE, 0, b"\xff\xff\xff\xff")))


async def undecodable_payload(stream: int, w: Writer) -> None:
    w.write(response(stream, b"\xff\xff\xff\xff\x0f"))


async def over_limit_response(stream: int, w: Writer) -> None:
    w.write(response(stream, bytes(codec.MAX_MESSAGE)))


async def silence(stream: int, w: Writer) -> None:
    pass


# behaviour -> (the error the call must raise, a word its message must contain)
CASES: dict[str, tuple[Behaviour, type[Exception], str]] = {
    "garbage": (garbage, AgentError, "unknown message type"),
    "oversized": (oversized, AgentError, "exceeds"),
    "truncated-eof": (truncated_then_eof, AgentError, "mid-frame"),
    "truncated-stall": (truncated_then_silence, AgentError, "stalled"),
    "half-header-stall": (header_half, AgentError, "stalled"),
    "drip": (drip, AgentError, "stalled"),
    "wrong-stream": (wrong_stream, AgentError, "no request"),
    "even-stream": (even_stream, AgentError, "no request"),
    "twice": (twice, AgentError, "no request"),  # the first answer counts, not the second
    "unasked-flood": (unasked_flood, AgentError, "no request"),
    "data-frames": (data_frames, AgentError, "unexpected message type"),
    "undecodable-response": (undecodable_response, AgentError, "malformed response"),
    "undecodable-payload": (undecodable_payload, AgentError, "undecodable"),
    "over-limit": (over_limit_response, AgentError, "exceeds"),
    "silence": (silence, AgentTimeout, "within"),
}


async def fake_agent(path: Path, behaviour: Behaviour) -> asyncio.AbstractServer:
    async def session(reader: asyncio.StreamReader, writer: Writer) -> None:
        try:
            while True:
                header = codec.decode_header(await reader.readexactly(codec.HEADER_SIZE))
                request = Request.FromString(await reader.readexactly(header.length))
                if request.method == "Version":
                    reply = pb.VersionResponse(agent_version="fake", protocol=PROTOCOL_VERSION)
                    writer.write(response(header.stream_id, reply.SerializeToString()))
                else:
                    await behaviour(header.stream_id, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    return await asyncio.start_unix_server(session, str(path))


async def never() -> int:
    await asyncio.Event().wait()
    return 0


async def attack(path: Path, behaviour: Behaviour) -> tuple[BaseException | None, float, int]:
    """Connect, handshake, make one call under attack; return its error (or, if the call got
    an answer, what broke the link after it), the time it took and the longest gap between
    ticks of a 10 ms ticker that ran throughout (ms)."""
    server = await fake_agent(path, behaviour)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    tick_task = asyncio.ensure_future(ticker())
    channel = AgentChannelSpec(kind="virtio-serial", socket_path=path)
    agent: AgentClient = await connect_agent(channel, 5.0, 3.0, never)
    started = time.monotonic()
    error: BaseException | None = None
    try:
        await agent.guest_details()
    except Exception as exc:
        error = exc
    took = time.monotonic() - started
    if not isinstance(error, AgentTimeout):
        await asyncio.wait_for(agent.conn.wait_closed(), 2.0)  # a broken link is closed
        if error is None:
            error = AgentError(f"link broke after the answer: {agent.conn.error}")
    await agent.close()
    tick_task.cancel()
    server.close()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    return error, took, int(max(gaps, default=0) * 1000)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_agent_fails_the_call_cleanly(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ttrpc_client, "FRAME_TIMEOUT", STALL)
    behaviour, kind, word = CASES[name]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    error, took, worst_gap_ms = asyncio.run(attack(tmp_path / "agent.sock", behaviour))
    assert isinstance(error, kind), f"{name}: {error!r}"
    assert word in str(error), f"{name}: {error}"
    assert took < 3.0 + 1.0, f"{name}: took {took:.1f} s"
    assert worst_gap_ms < 500, f"{name}: the event loop stalled {worst_gap_ms} ms"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 64 * 1024, f"{name}: peak RSS grew {grown_kib} KiB"


def test_frame_too_large_is_refused_before_reading_the_data() -> None:
    decoder = codec.FrameDecoder(max_message=1024)
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"\xff\xff\xff\xff\x00\x00\x00\x01\x02\x00")
    assert decoder.pending == 0
