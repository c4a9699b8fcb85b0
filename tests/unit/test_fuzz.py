"""Property-based and random-byte fuzzing of every host-side decoder.

Each decoder either returns a value or raises its one documented error type; nothing else
escapes, nothing hangs, and nothing holds more than its stated limit. The suite runs
``RUNVM_FUZZ_EXAMPLES`` examples per property (default 200); a longer run:

    RUNVM_FUZZ_EXAMPLES=20000 python -m pytest tests/unit/test_fuzz.py -q
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from typing import Any

import pytest
from google.protobuf import empty_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runvm import config as cfg
from runvm.errors import AgentError, ConfigError, ProtocolError, RpcError
from runvm.oci import spec as ocispec
from runvm.protocol import agent_pb2 as pb
from runvm.protocol.client import AgentClient
from runvm.shim import wire
from runvm.shim.service import TaskService
from runvm.ttrpc import Client, Server, codec
from runvm.ttrpc.codec import HEADER_SIZE, Frame, FrameDecoder, encode_frame
from runvm.ttrpc.server import CallContext

EXAMPLES = int(os.environ.get("RUNVM_FUZZ_EXAMPLES", "200"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMIT = 4096


# --- ttrpc framing ---------------------------------------------------------------------------
@fuzz
@given(st.lists(st.binary(max_size=600), max_size=12))
def test_frame_decoder_random_chunks(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_message=LIMIT)
    for chunk in chunks:
        try:
            frames = decoder.feed(chunk)
        except ProtocolError:
            with pytest.raises(ProtocolError):  # a broken stream stays broken
                decoder.feed(b"\x00")
            return
        assert all(len(f.data) <= LIMIT for f in frames)
        assert decoder.pending <= LIMIT + HEADER_SIZE


frames_st = st.lists(
    st.builds(
        Frame,
        stream_id=st.integers(0, 2**32 - 1),
        type=st.sampled_from([1, 2, 3]),
        flags=st.integers(0, 255),
        data=st.binary(max_size=300),
    ),
    max_size=8,
)


@fuzz
@given(frames_st, st.lists(st.integers(1, 64), min_size=1, max_size=40))
def test_frames_survive_any_split(frames: list[Frame], cuts: list[int]) -> None:
    wire_bytes = b"".join(encode_frame(f) for f in frames)
    decoder, got, pos, i = FrameDecoder(max_message=LIMIT), [], 0, 0
    while pos < len(wire_bytes):
        step = cuts[i % len(cuts)]
        got += decoder.feed(wire_bytes[pos : pos + step])
        pos, i = pos + step, i + 1
    assert got == frames
    assert decoder.pending == 0


async def _client_against(data: bytes) -> BaseException | bytes:
    """One call on a client whose peer answers any request with ``data``, then closes."""
    host, peer = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=host)
    client = Client(reader, writer, max_message=LIMIT)
    client.frame_timeout = 0.2
    loop = asyncio.get_running_loop()
    peer.setblocking(False)

    async def answer() -> None:
        await loop.sock_recv(peer, 65536)
        await loop.sock_sendall(peer, data)
        peer.close()

    task = asyncio.ensure_future(answer())
    try:
        return await client.call("svc", "M", b"payload", timeout=2.0)
    except (RpcError, ProtocolError, ConnectionError) as exc:
        return exc
    finally:
        await client.close()
        await task


@fuzz
@given(st.binary(max_size=2000))
def test_client_random_replies(data: bytes) -> None:
    outcome = asyncio.run(_client_against(data))  # anything else propagates and fails
    assert outcome is not None


@fuzz
@given(
    st.integers(0, 40),
    st.binary(max_size=200),
    st.sampled_from([1, 2, 3]),
)
def test_client_framed_random_responses(stream_id: int, body: bytes, mtype: int) -> None:
    frame = encode_frame(Frame(stream_id, mtype, 0, body))
    outcome = asyncio.run(_client_against(frame))
    if isinstance(outcome, bytes):  # only a well-formed response to stream 1 can succeed
        assert stream_id == 1 and mtype == 2


class _Canned:
    """A connection stand-in that answers every call with fixed bytes (pure decoding)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    async def call(self, service: str, method: str, payload: bytes, **kw: Any) -> bytes:
        return self.payload

    def fail(self, error: Exception) -> None:
        pass


@fuzz
@given(st.binary(max_size=400))
def test_agent_replies_random_bytes(payload: bytes) -> None:
    agent = AgentClient(_Canned(payload))  # type: ignore[arg-type]

    async def calls() -> None:
        for call in (
            agent.guest_details,
            lambda: agent.wait_process("c", ""),
            lambda: agent.list_processes("c"),
            lambda: agent.stats_container("c"),
            lambda: agent.read_stream("stdout", "c"),
            lambda: agent.exec_process(pb.ExecProcessRequest()),
            agent.check,
        ):
            with contextlib.suppress(AgentError, RpcError):
                await call()

    asyncio.run(calls())


# --- OCI config --------------------------------------------------------------------------
@fuzz
@given(st.binary(max_size=600))
def test_spec_random_bytes(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        ocispec.parse_spec(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=30,
)
spec_keys = st.sampled_from(
    ["ociVersion", "root", "process", "hostname", "mounts", "linux", "annotations", "hooks"]
)
process_keys = st.sampled_from(
    ["args", "env", "cwd", "terminal", "user", "rlimits", "capabilities", "noNewPrivileges"]
)


def _mutated(base: dict[str, Any], keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.dictionaries(keys, json_values, max_size=4).map(lambda d: {**base, **d})


VALID = {
    "ociVersion": "1.0.2",
    "root": {"path": "rootfs"},
    "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
    "linux": {"namespaces": [{"type": "pid"}]},
}


@fuzz
@given(_mutated(VALID, spec_keys))
def test_spec_mutated_fields(doc: dict[str, Any]) -> None:
    try:
        data = json.dumps(doc).encode()
    except ValueError:  # NaN-free JSON only
        return
    try:
        parsed = ocispec.parse_spec(data)
    except ConfigError as exc:
        assert str(exc).startswith("config.json")
        return
    assert isinstance(parsed["root"]["path"], str)


@fuzz
@given(_mutated(VALID["process"], process_keys))  # type: ignore[arg-type]
def test_process_mutated_fields(doc: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        ocispec.parse_process(json.dumps(doc).encode())


def test_spec_depth_and_size_limits() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ConfigError):
        ocispec.parse_spec(deep)
    with pytest.raises(ConfigError):
        ocispec.parse_spec(b" " * (ocispec.MAX_SPEC_BYTES + 1))


# --- containerd's requests to the shim ---------------------------------------------------------
class _NoEvents:
    def publish(self, event: Any) -> None:
        pass


SHIM_METHODS = sorted(set(wire.TASK_METHODS) - {"Create", "Shutdown"})


@fuzz
@given(st.sampled_from(SHIM_METHODS), st.binary(max_size=300))
def test_shim_requests_random_bytes(method: str, payload: bytes) -> None:
    service = TaskService("g", "ns", cfg.RunvmConfig(), _NoEvents())  # type: ignore[arg-type]
    handler = service.handlers()[method]

    async def call() -> None:
        with contextlib.suppress(RpcError):
            await handler(payload, CallContext("containerd.task.v2.Task", method, {}, None))

    asyncio.run(call())


async def _server_against(data: bytes) -> bytes:
    """Send ``data`` to a ttrpc server, then check it still answers a new connection."""
    server = Server(max_message=LIMIT)
    server.register("svc", {"Ping": lambda payload, ctx: _pong()})
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=a)
    serving = asyncio.ensure_future(server.serve_connection(reader, writer))
    loop = asyncio.get_running_loop()
    b.setblocking(False)
    await loop.sock_sendall(b, data)
    b.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(serving, 5.0)  # the connection ends: EOF or a protocol error
    b.close()
    c, d = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=c)
    serving = asyncio.ensure_future(server.serve_connection(reader, writer))
    r2, w2 = await asyncio.open_connection(sock=d)
    client = Client(r2, w2)
    try:
        return await client.call("svc", "Ping", b"", timeout=5.0)
    finally:
        await client.close()
        server.close()
        serving.cancel()


async def _pong() -> bytes:
    return empty_pb2.Empty().SerializeToString() + b"pong"


@fuzz
@given(st.binary(max_size=1000) | frames_st.map(lambda fs: b"".join(map(encode_frame, fs))))
def test_server_survives_random_clients(data: bytes) -> None:
    assert asyncio.run(_server_against(data)) == b"pong"


def test_codec_limit_is_ttrpc_default() -> None:
    assert codec.MAX_MESSAGE == 4 << 20
    assert pb.GuestDetailsResponse().ByteSize() == 0
