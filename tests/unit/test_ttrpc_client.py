"""The ttrpc client against a scripted, possibly hostile, peer on a real socketpair."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable

import pytest

from runvm.errors import FrameTooLarge, ProtocolError, RpcError
from runvm.ttrpc import Client, Code
from runvm.ttrpc.codec import Frame, MessageType, encode_frame, read_frame
from runvm.ttrpc.ttrpc_pb2 import Request, Response, Status

Peer = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def run(test: Callable[[Client, Peer], Awaitable[None]], max_message: int = 4 << 20) -> None:
    """Run ``test`` with a client and the raw other end; a hang fails after 10 s."""

    async def main() -> None:
        a, b = socket.socketpair()
        client = Client(*await asyncio.open_connection(sock=a), max_message=max_message)
        peer = await asyncio.open_connection(sock=b)
        try:
            await asyncio.wait_for(test(client, peer), 10)
        finally:
            await client.close()
            peer[1].close()

    asyncio.run(main())


async def next_request(peer: Peer) -> tuple[int, Request]:
    frame = await read_frame(peer[0])
    assert frame is not None and frame.type == MessageType.REQUEST and frame.flags == 0
    return frame.stream_id, Request.FromString(frame.data)


async def respond(peer: Peer, stream_id: int, payload: bytes = b"", code: int = 0) -> None:
    response = Response(payload=payload)
    if code:
        response.status.CopyFrom(Status(code=code, message=f"failed with {code}"))
    peer[1].write(
        encode_frame(Frame(stream_id, MessageType.RESPONSE, 0, response.SerializeToString()))
    )
    await peer[1].drain()


def test_request_fields_and_odd_increasing_stream_ids() -> None:
    async def test(client: Client, peer: Peer) -> None:
        for expected_id in (1, 3, 5):
            call = asyncio.create_task(
                client.call("svc.S", "M", b"in", timeout=2.5, metadata={"k": "v", "a": "b"})
            )
            stream_id, request = await next_request(peer)
            assert stream_id == expected_id
            assert (request.service, request.method, request.payload) == ("svc.S", "M", b"in")
            assert request.timeout_nano == 2_500_000_000
            assert [(kv.key, kv.value) for kv in request.metadata] == [("k", "v"), ("a", "b")]
            await respond(peer, stream_id, b"out")
            assert await call == b"out"
        call = asyncio.create_task(client.call("s", "m", b""))
        assert (await next_request(peer))[1].timeout_nano == 0
        await respond(peer, 7)
        assert await call == b""

    run(test)


def test_out_of_order_responses_match_by_stream_id() -> None:
    async def test(client: Client, peer: Peer) -> None:
        calls = [asyncio.create_task(client.call("s", "m", bytes([i]))) for i in range(20)]
        requests = [await next_request(peer) for _ in calls]
        for stream_id, request in reversed(requests):
            await respond(peer, stream_id, request.payload * 2)
        assert await asyncio.gather(*calls) == [bytes([i, i]) for i in range(20)]

    run(test)


def test_status_codes() -> None:
    async def test(client: Client, peer: Peer) -> None:
        call = asyncio.create_task(client.call("s", "m", b""))
        stream_id, _ = await next_request(peer)
        await respond(peer, stream_id, code=Code.NOT_FOUND)
        with pytest.raises(RpcError) as info:
            await call
        assert (info.value.code, info.value.message) == (Code.NOT_FOUND, "failed with 5")
        # A status with code 0 is success, like no status at all.
        call = asyncio.create_task(client.call("s", "m", b""))
        stream_id, _ = await next_request(peer)
        ok = Response(status=Status(code=0, message="fine"), payload=b"p")
        peer[1].write(encode_frame(Frame(stream_id, 2, 0, ok.SerializeToString())))
        assert await call == b"p"

    run(test)


@pytest.mark.parametrize("stray", [99, 2])
def test_response_to_no_request_breaks_the_connection(stray: int) -> None:
    async def test(client: Client, peer: Peer) -> None:
        call = asyncio.create_task(client.call("s", "m", b""))
        await next_request(peer)
        await respond(peer, stray, b"stray")
        with pytest.raises(ProtocolError, match=f"stream {stray}, which has no request"):
            await call
        assert client.closed and client.dropped == 0
        assert isinstance(client.error, ProtocolError)

    run(test)


def test_a_second_answer_breaks_the_connection() -> None:
    async def test(client: Client, peer: Peer) -> None:
        call = asyncio.create_task(client.call("s", "m", b""))
        stream_id, _ = await next_request(peer)
        await respond(peer, stream_id, b"mine")
        assert await call == b"mine"
        await respond(peer, stream_id, b"again")
        await asyncio.wait_for(client.wait_closed(), 2)
        assert "no request outstanding" in str(client.error)

    run(test)


def test_timeout_forgets_the_stream_and_connection_stays_usable() -> None:
    async def test(client: Client, peer: Peer) -> None:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="s/m"):
            await client.call("s", "m", b"", timeout=0.05)
        assert time.monotonic() - started < 1
        late_id, request = await next_request(peer)
        assert 0 < request.timeout_nano <= 50_000_000
        await respond(peer, late_id, b"late")
        call = asyncio.create_task(client.call("s", "m", b""))
        stream_id, _ = await next_request(peer)
        await respond(peer, stream_id, b"ok")
        assert await call == b"ok"
        assert client.dropped == 1

    run(test)


def test_cancelled_call_forgets_its_stream() -> None:
    async def test(client: Client, peer: Peer) -> None:
        call = asyncio.create_task(client.call("s", "m", b""))
        stream_id, _ = await next_request(peer)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await respond(peer, stream_id)
        call = asyncio.create_task(client.call("s", "m", b""))
        await respond(peer, (await next_request(peer))[0], b"next")
        assert await call == b"next"
        assert client.dropped == 1

    run(test)


def test_oversized_request_is_refused_locally() -> None:
    async def test(client: Client, peer: Peer) -> None:
        with pytest.raises(FrameTooLarge):
            await client.call("s", "m", b"x" * 200)
        call = asyncio.create_task(client.call("s", "m", b"x"))
        stream_id, _ = await next_request(peer)
        assert stream_id == 1
        await respond(peer, stream_id)
        await call

    run(test, max_message=128)


async def fail_pending(client: Client, peer: Peer, action: bytes | None) -> list[BaseException]:
    """Start 10 calls, let the peer send ``action`` (None: close), return the call errors."""
    calls = [asyncio.create_task(client.call("s", "m", b"")) for _ in range(10)]
    for _ in calls:
        await next_request(peer)
    if action is None:
        peer[1].close()
    else:
        peer[1].write(action)
    started = time.monotonic()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert time.monotonic() - started < 1
    assert client.closed
    await client.wait_closed()
    return [r for r in results if isinstance(r, BaseException)]


def test_peer_closing_fails_every_pending_call_and_later_calls() -> None:
    async def test(client: Client, peer: Peer) -> None:
        errors = await fail_pending(client, peer, None)
        assert len(errors) == 10
        assert all(isinstance(e, ConnectionError) for e in errors)
        assert len({id(e) for e in errors}) == 10  # a fresh exception per call
        with pytest.raises(ConnectionError, match="closed by peer"):
            await client.call("s", "m", b"")

    run(test)


HOSTILE = {
    "garbage": b"\xff" * 64,
    "oversized": struct.pack(">IIBB", (4 << 20) + 1, 1, 2, 0),
    "4GiB": struct.pack(">IIBB", 0xFFFF_FFFF, 1, 2, 0),
    "malformed response": encode_frame(Frame(1, MessageType.RESPONSE, 0, b"\xff\xff\xff")),
    "request from server": encode_frame(Frame(1, MessageType.REQUEST, 0, b"")),
    "data frame": encode_frame(Frame(1, MessageType.DATA, 0, b"")),
    "truncated": struct.pack(">IIBB", 100, 1, 2, 0) + b"short",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_peer_fails_pending_calls_with_protocol_error(name: str) -> None:
    async def test(client: Client, peer: Peer) -> None:
        data: bytes | None = HOSTILE[name]
        if name == "truncated":
            peer[1].write(HOSTILE[name])
            data = None  # then close: EOF mid-frame
        errors = await fail_pending(client, peer, data)
        assert len(errors) == 10
        assert all(isinstance(e, ProtocolError) for e in errors), errors
        with pytest.raises(ProtocolError):
            await client.call("s", "m", b"")
        # The client closed its end: the peer sees EOF.
        assert await peer[0].read() == b""

    run(test)


def test_oversized_response_error_names_the_limit() -> None:
    async def test(client: Client, peer: Peer) -> None:
        errors = await fail_pending(client, peer, HOSTILE["oversized"])
        assert isinstance(errors[0].__cause__, FrameTooLarge)
        assert "exceeds maximum message size" in str(errors[0])

    run(test)


def test_close_wakes_pending_calls_and_is_idempotent() -> None:
    async def test(client: Client, peer: Peer) -> None:
        calls = [asyncio.create_task(client.call("s", "m", b"")) for _ in range(5)]
        for _ in calls:
            await next_request(peer)
        await client.close()
        await client.close()
        for result in await asyncio.gather(*calls, return_exceptions=True):
            assert isinstance(result, ConnectionError) and "client closed" in str(result)
        assert client.closed
        assert await peer[0].read() == b""

    run(test)


def test_leftovers_before_the_first_answer_are_dropped_only_when_asked() -> None:
    """A virtio-serial client (``leftovers=True``) drops a previous client's late replies
    that arrive before its own first answer, and one more answer on its first stream; after
    that, or without the flag, a stray reply breaks it."""

    async def main(leftovers: bool) -> tuple[bytes | None, int, bool]:
        a, b = socket.socketpair()
        client = Client(*await asyncio.open_connection(sock=a), leftovers=leftovers)
        peer_r, peer_w = await asyncio.open_connection(sock=b)
        call = asyncio.ensure_future(client.call("s", "m", b"", timeout=5))
        request = await read_frame(peer_r)
        assert request is not None and request.stream_id == 1
        for stale in (7, 9):
            reply = Response(payload=b"old").SerializeToString()
            peer_w.write(encode_frame(Frame(stale, MessageType.RESPONSE, 0, reply)))
        mine = Response(payload=b"mine").SerializeToString()
        peer_w.write(encode_frame(Frame(1, MessageType.RESPONSE, 0, mine)))
        try:
            answer: bytes | None = await call
        except ProtocolError:
            answer = None
        if answer is not None:
            # One more answer on the first stream is dropped (a previous client's came
            # first); after that a stray reply is an error again.
            reply = Response(payload=b"old").SerializeToString()
            for stray in (1, 11):
                peer_w.write(encode_frame(Frame(stray, MessageType.RESPONSE, 0, reply)))
            await asyncio.wait_for(client.wait_closed(), 5)
        dropped = client.dropped
        broken = isinstance(client.error, ProtocolError)
        await client.close()
        peer_w.close()
        return answer, dropped, broken

    assert asyncio.run(main(True)) == (b"mine", 3, True)
    assert asyncio.run(main(False)) == (None, 0, True)
