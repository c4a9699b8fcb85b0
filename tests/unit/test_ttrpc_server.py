"""The ttrpc server, driven by the real client and by raw frames."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from runvm.errors import RpcError
from runvm.ttrpc import CallContext, Client, Code, Server
from runvm.ttrpc.codec import Frame, MessageType, encode_frame, read_frame
from runvm.ttrpc.ttrpc_pb2 import KeyValue, Request, Response

Peer = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def echo(payload: bytes, ctx: CallContext) -> bytes:
    return payload


def make_server(**kw: int) -> Server:
    server = Server(**kw)
    server.register("test.Echo", {"Echo": echo})
    return server


def run(
    server: Server, test: Callable[[Client, Peer, asyncio.Task[None]], Awaitable[None]]
) -> None:
    """Serve one socketpair end; give ``test`` a client on it, a raw second connection and
    the serving task of the raw one. A hang fails after 10 s."""

    async def main() -> None:
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        served = asyncio.create_task(
            server.serve_connection(*await asyncio.open_connection(sock=b))
        )
        raw_served = asyncio.create_task(
            server.serve_connection(*await asyncio.open_connection(sock=d))
        )
        client = Client(*await asyncio.open_connection(sock=a))
        raw = await asyncio.open_connection(sock=c)
        try:
            await asyncio.wait_for(test(client, raw, raw_served), 10)
        finally:
            await client.close()
            raw[1].close()
            await asyncio.wait_for(asyncio.gather(served, raw_served, return_exceptions=True), 5)
            server.close()

    asyncio.run(main())


async def raw_call(
    peer: Peer, stream_id: int, data: bytes, mtype: int = MessageType.REQUEST
) -> Response:
    peer[1].write(encode_frame(Frame(stream_id, mtype, 0, data)))
    frame = await read_frame(peer[0])
    assert frame is not None and frame.type == MessageType.RESPONSE
    assert frame.stream_id == stream_id
    return Response.FromString(frame.data)


def request(method: str = "Echo", payload: bytes = b"", timeout_nano: int = 0) -> bytes:
    return Request(
        service="test.Echo", method=method, payload=payload, timeout_nano=timeout_nano
    ).SerializeToString()


def test_hundred_concurrent_calls_answered_out_of_order() -> None:
    finished: list[int] = []

    async def slow_echo(payload: bytes, ctx: CallContext) -> bytes:
        await asyncio.sleep(random.random() * 0.05)
        finished.append(int(payload))
        return payload + b"!"

    server = Server()
    server.register("test.Slow", {"Echo": slow_echo})

    async def test(client: Client, raw: Peer, _: object) -> None:
        results = await asyncio.gather(
            *(client.call("test.Slow", "Echo", b"%d" % i) for i in range(100))
        )
        assert results == [b"%d!" % i for i in range(100)]
        assert sorted(finished) == list(range(100)) and finished != sorted(finished)
        assert client.dropped == 0

    run(server, test)


def test_handler_errors_map_to_status_codes() -> None:
    async def not_found(payload: bytes, ctx: CallContext) -> bytes:
        raise RpcError(Code.NOT_FOUND, "process already finished")

    async def crash(payload: bytes, ctx: CallContext) -> bytes:
        raise ValueError("boom")

    async def wrong_type(payload: bytes, ctx: CallContext) -> bytes:
        return "not bytes"  # type: ignore[return-value]

    async def own_timeout(payload: bytes, ctx: CallContext) -> bytes:
        raise TimeoutError("inner")

    server = make_server()
    server.register(
        "test.Err", {"NF": not_found, "Crash": crash, "Wrong": wrong_type, "Tmo": own_timeout}
    )

    async def test(client: Client, raw: Peer, _: object) -> None:
        expected = {
            "NF": (Code.NOT_FOUND, "process already finished"),
            "Crash": (Code.UNKNOWN, "boom"),
            "Wrong": (Code.UNKNOWN, None),
            "Tmo": (Code.UNKNOWN, "inner"),
        }
        for method, (code, message) in expected.items():
            with pytest.raises(RpcError) as info:
                await client.call("test.Err", method, b"", timeout=5)
            assert info.value.code == code
            if message is not None:
                assert info.value.message == message
        with pytest.raises(RpcError) as info:
            await client.call("no.Such", "Echo", b"")
        assert (info.value.code, info.value.message) == (Code.UNIMPLEMENTED, "service no.Such")
        with pytest.raises(RpcError) as info:
            await client.call("test.Echo", "Nope", b"")
        assert (info.value.code, info.value.message) == (Code.UNIMPLEMENTED, "method Nope")
        assert await client.call("test.Echo", "Echo", b"still fine") == b"still fine"

    run(server, test)


def test_context_carries_metadata_and_timeout() -> None:
    seen: list[CallContext] = []

    async def record(payload: bytes, ctx: CallContext) -> bytes:
        seen.append(ctx)
        return b""

    server = Server()
    server.register("test.Ctx", {"Get": record})

    async def test(client: Client, raw: Peer, _: object) -> None:
        await client.call("test.Ctx", "Get", b"", metadata={"a": "1"}, timeout=3)
        req = Request(
            service="test.Ctx",
            method="Get",
            metadata=[KeyValue(key="k", value="x"), KeyValue(key="k", value="y")],
        )
        await raw_call(raw, 1, req.SerializeToString())
        assert seen[0] == CallContext("test.Ctx", "Get", {"a": ["1"]}, 3.0)
        assert seen[1] == CallContext("test.Ctx", "Get", {"k": ["x", "y"]}, None)

    run(server, test)


def test_deadline_exceeded_on_server_cancels_handler() -> None:
    cancelled = asyncio.Event()

    async def hang(payload: bytes, ctx: CallContext) -> bytes:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    server = make_server()
    server.register("test.Echo2", {"Hang": hang})

    async def test(client: Client, raw: Peer, _: object) -> None:
        started = time.monotonic()
        req = Request(service="test.Echo2", method="Hang", timeout_nano=50_000_000)
        response = await raw_call(raw, 1, req.SerializeToString())
        assert response.status.code == Code.DEADLINE_EXCEEDED
        assert 0.04 < time.monotonic() - started < 1
        assert cancelled.is_set()
        # Client and server deadlines together: the client gives up, the server's late
        # DEADLINE_EXCEEDED answer is dropped by the client.
        with pytest.raises(TimeoutError):
            await client.call("test.Echo2", "Hang", b"", timeout=0.05)
        for _ in range(100):
            if client.dropped:
                break
            await asyncio.sleep(0.01)
        assert client.dropped == 1
        assert await client.call("test.Echo", "Echo", b"x") == b"x"

    run(server, test)


def test_stream_id_rules() -> None:
    async def test(client: Client, raw: Peer, _: object) -> None:
        response = await raw_call(raw, 2, request(payload=b"a"))
        assert response.status.code == Code.INVALID_ARGUMENT
        assert "odd" in response.status.message
        assert (await raw_call(raw, 5, request(payload=b"b"))).payload == b"b"
        for reused in (5, 3):
            response = await raw_call(raw, reused, request())
            assert response.status.code == Code.INVALID_ARGUMENT
            assert "must increment" in response.status.message
        assert (await raw_call(raw, 7, request(payload=b"c"))).payload == b"c"

    run(make_server(), test)


def test_malformed_request_is_invalid_argument() -> None:
    async def test(client: Client, raw: Peer, _: object) -> None:
        response = await raw_call(raw, 1, b"\xff\xff\xff")
        assert response.status.code == Code.INVALID_ARGUMENT
        assert (await raw_call(raw, 3, request(payload=b"ok"))).payload == b"ok"

    run(make_server(), test)


def test_oversized_request_gets_resource_exhausted_and_connection_survives() -> None:
    async def test(client: Client, raw: Peer, _: object) -> None:
        with pytest.raises(RpcError) as info:
            await client.call("test.Echo", "Echo", b"x" * 2000)
        assert info.value.code == Code.RESOURCE_EXHAUSTED
        assert "exceed maximum message size of 1024" in info.value.message
        assert await client.call("test.Echo", "Echo", b"small") == b"small"
        # 8 MiB announced and sent in pieces: skipped, answered, and the next frame is read.
        raw[1].write(struct.pack(">IIBB", 8 << 20, 1, 1, 0))
        for _ in range(128):
            raw[1].write(b"\0" * (64 << 10))
            await raw[1].drain()
        frame = await read_frame(raw[0])
        assert frame is not None and frame.stream_id == 1
        assert Response.FromString(frame.data).status.code == Code.RESOURCE_EXHAUSTED
        assert (await raw_call(raw, 3, request(payload=b"after"))).payload == b"after"

    run(make_server(max_message=1024), test)


def test_oversized_response_becomes_resource_exhausted() -> None:
    async def double(payload: bytes, ctx: CallContext) -> bytes:
        return payload * 2

    server = Server(max_message=1024)
    server.register("test.Double", {"Double": double})

    async def test(client: Client, raw: Peer, _: object) -> None:
        assert await client.call("test.Double", "Double", b"x" * 500) == b"x" * 1000
        with pytest.raises(RpcError) as info:
            await client.call("test.Double", "Double", b"x" * 600)
        assert info.value.code == Code.RESOURCE_EXHAUSTED
        assert "response length 1203" in info.value.message
        assert not client.closed

    run(server, test)


def test_non_request_frames_are_ignored_and_unknown_type_ends_connection() -> None:
    async def test(client: Client, raw: Peer, raw_served: asyncio.Task[None]) -> None:
        raw[1].write(encode_frame(Frame(1, MessageType.DATA, 1, b"data")))
        raw[1].write(encode_frame(Frame(3, MessageType.RESPONSE, 0, b"resp")))
        assert (await raw_call(raw, 5, request(payload=b"x"))).payload == b"x"
        raw[1].write(struct.pack(">IIBB", 0, 7, 9, 0))
        assert await raw[0].read() == b""  # server hung up
        await raw_served
        assert await client.call("test.Echo", "Echo", b"y") == b"y"  # others unaffected

    run(make_server(), test)


def test_max_concurrent_limits_handlers_in_flight() -> None:
    running = 0
    peak = 0
    release = asyncio.Event()

    async def gate(payload: bytes, ctx: CallContext) -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return payload

    server = Server(max_concurrent=3)
    server.register("test.Gate", {"Wait": gate})

    async def test(client: Client, raw: Peer, _: object) -> None:
        calls = [
            asyncio.create_task(client.call("test.Gate", "Wait", b"%d" % i)) for i in range(10)
        ]
        await asyncio.sleep(0.1)
        assert (running, peak) == (3, 3)
        release.set()
        assert await asyncio.gather(*calls) == [b"%d" % i for i in range(10)]
        assert peak == 3

    run(server, test)


def test_connection_close_cancels_handlers() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hang(payload: bytes, ctx: CallContext) -> bytes:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    server = Server()
    server.register("test.Hang", {"Hang": hang})

    async def test(client: Client, raw: Peer, raw_served: asyncio.Task[None]) -> None:
        raw[1].write(
            encode_frame(
                Frame(1, 1, 0, Request(service="test.Hang", method="Hang").SerializeToString())
            )
        )
        await started.wait()
        raw[1].close()
        await asyncio.wait_for(raw_served, 1)
        assert cancelled.is_set()

    run(server, test)


def test_server_dying_mid_call_fails_client_calls_fast() -> None:
    async def hang(payload: bytes, ctx: CallContext) -> bytes:
        await asyncio.sleep(30)
        return b""

    server = Server()
    server.register("test.Hang", {"Hang": hang})

    async def test(client: Client, raw: Peer, _: object) -> None:
        calls = [asyncio.create_task(client.call("test.Hang", "Hang", b"")) for _ in range(10)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        server.close()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert time.monotonic() - started < 1
        assert all(isinstance(r, ConnectionError) for r in results), results
        assert client.closed

    run(server, test)


def test_serve_unix_and_connect_unix(tmp_path: Path) -> None:
    async def main() -> None:
        server = make_server()
        path = str(tmp_path / "ttrpc.sock")
        listener = await server.serve_unix(path)
        clients = [await Client.connect_unix(path) for _ in range(3)]
        results = await asyncio.gather(
            *(c.call("test.Echo", "Echo", b"%d" % i) for i, c in enumerate(clients))
        )
        assert results == [b"0", b"1", b"2"]
        server.close()
        for client in clients:
            await asyncio.wait_for(client.wait_closed(), 2)
            assert client.closed
        assert not listener.is_serving()
        with pytest.raises(OSError):
            await Client.connect_unix(path)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_register_twice_is_refused() -> None:
    server = make_server()
    with pytest.raises(ValueError, match="already registered"):
        server.register("test.Echo", {})
    with pytest.raises(ValueError):
        Server(max_concurrent=0)


def test_a_session_on_pipes_ends_cleanly_at_eof() -> None:
    """The agent serves its virtio-serial port through pipe transports, which cannot wait for
    their close: the session must still end without an error when the host goes away."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(r_in, "rb", buffering=0))  # fmt: skip
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(w_out, "wb", buffering=0))  # fmt: skip
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        os.close(w_in)  # the host side closes: EOF at once
        await asyncio.wait_for(Server().serve_connection(reader, writer), 5)
        os.close(r_out)

    asyncio.run(main())


def test_reused_stream_id_starts_a_new_client_when_the_transport_has_no_boundaries() -> None:
    """With ``on_restart`` (the agent's virtio-serial port) a reused id means the host side
    was replaced: the new client is served and the old one's late reply is never sent."""
    release = asyncio.Event()
    restarts: list[int] = []

    cancelled: list[int] = []

    async def slow(payload: bytes, ctx: CallContext) -> bytes:
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise
        return b"late"

    async def main() -> None:
        server = make_server()
        server.register("test.Slow", {"Slow": slow})
        a, b = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=b)
        served = asyncio.create_task(
            server.serve_connection(reader, writer, on_restart=lambda: restarts.append(1))
        )
        peer = await asyncio.open_connection(sock=a)
        old = Request(service="test.Slow", method="Slow").SerializeToString()
        peer[1].write(encode_frame(Frame(1, MessageType.REQUEST, 0, old)))
        peer[1].write(encode_frame(Frame(3, MessageType.REQUEST, 0, old)))
        await asyncio.sleep(0.1)
        response = await raw_call(peer, 1, request(payload=b"new"))  # the next client
        assert response.payload == b"new" and restarts == [1]
        assert cancelled == [1, 1]  # the old client's calls end as at its EOF
        release.set()  # the old client's two calls finish now: nothing may reach the new one
        response = await raw_call(peer, 3, request(payload=b"second"))
        assert response.payload == b"second"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(read_frame(peer[0]), 0.3)
        peer[1].close()
        await asyncio.wait_for(served, 5)
        server.close()

    asyncio.run(main())


def test_drain_waits_for_replies_in_flight_and_no_longer_than_its_timeout() -> None:
    server = make_server()
    released = asyncio.Event()

    async def slow(payload: bytes, ctx: CallContext) -> bytes:
        await asyncio.sleep(0.05)
        return b"late"

    async def stuck(payload: bytes, ctx: CallContext) -> bytes:
        await released.wait()
        return b""

    server.register("test.Slow", {"Slow": slow, "Stuck": stuck})

    async def test(client: Client, raw: Peer, _: asyncio.Task[None]) -> None:
        call = asyncio.create_task(client.call("test.Slow", "Slow", b""))
        await asyncio.sleep(0.01)  # the call is in flight
        started = time.monotonic()
        await server.drain(5)  # returns once the reply is written
        assert 0.03 <= time.monotonic() - started < 1
        assert await asyncio.wait_for(call, 1) == b"late"
        hung = asyncio.create_task(client.call("test.Slow", "Stuck", b""))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        await server.drain(0.1)
        assert 0.09 <= time.monotonic() - started < 1 and not hung.done()
        released.set()
        assert await hung == b""

    run(server, test)
