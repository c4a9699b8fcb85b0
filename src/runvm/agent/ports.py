"""Port forwarding in the agent: TCP connections to the guest's loopback, driven by the host.

Contract: ``OpenPort`` connects to 127.0.0.1 (or [::1]) at the port in the VM's network
namespace, which every container of the pod shares, and names the connection by a stream
id; a refused or timed-out connect is UNAVAILABLE. ``ReadPort`` waits for data and returns
at most ``len`` (capped at :data:`CHUNK`) bytes, ``b""`` at end of stream, ABORTED when the
guest peer reset the connection. ``WritePort``
returns once the data is queued below the transport's high-water mark (backpressure).
``ClosePort`` half-closes (``write_only``) or forgets the stream. At most
:data:`MAX_STREAMS` are open at once; an unknown id is NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from runvm.agent.rpc import Handler, unary
from runvm.errors import RpcError
from runvm.protocol import agent_pb2 as pb
from runvm.ttrpc import Code

CHUNK = 64 * 1024
MAX_STREAMS = 512
CONNECT_TIMEOUT = 10.0


class _Stream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.transport.abort()


class PortService:
    def __init__(self) -> None:
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)

    def _get(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise RpcError(Code.NOT_FOUND, f"port stream {stream_id} does not exist")
        return stream

    async def open_port(self, request: pb.OpenPortRequest) -> pb.OpenPortResponse:
        if not 1 <= request.port <= 65535:
            raise RpcError(Code.INVALID_ARGUMENT, f"port {request.port} is outside 1..65535")
        if len(self._streams) >= MAX_STREAMS:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"{MAX_STREAMS} port streams are open")
        host = "::1" if request.ipv6 else "127.0.0.1"
        try:
            connect = asyncio.open_connection(host, request.port, limit=CHUNK)
            reader, writer = await asyncio.wait_for(connect, CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise RpcError(Code.UNAVAILABLE, f"connect {host} port {request.port}: {why}") from exc
        stream_id = next(self._ids)
        self._streams[stream_id] = _Stream(reader, writer)
        return pb.OpenPortResponse(stream_id=stream_id)

    async def read_port(self, request: pb.ReadPortRequest) -> pb.ReadStreamResponse:
        stream = self._get(request.stream_id)
        try:
            data = await stream.reader.read(min(request.len or CHUNK, CHUNK))
        except OSError as exc:  # a reset: the host resets its side too
            raise RpcError(Code.ABORTED, f"port stream {request.stream_id}: {exc}") from exc
        return pb.ReadStreamResponse(data=data)

    async def write_port(self, request: pb.WritePortRequest) -> pb.WriteStreamResponse:
        stream = self._get(request.stream_id)
        try:
            stream.writer.write(request.data)
            await stream.writer.drain()
        except (OSError, RuntimeError) as exc:  # RuntimeError: written after a half-close
            raise RpcError(Code.FAILED_PRECONDITION, f"port stream {request.stream_id}: "
                           f"{exc}") from exc  # fmt: skip
        return pb.WriteStreamResponse(len=len(request.data))

    async def close_port(self, request: pb.ClosePortRequest) -> pb.Empty:
        if request.write_only:
            stream = self._get(request.stream_id)
            with contextlib.suppress(OSError):
                if stream.writer.can_write_eof():
                    stream.writer.write_eof()
        else:
            stream_or_none = self._streams.pop(request.stream_id, None)
            if stream_or_none is not None:
                stream_or_none.close()
        return pb.Empty()

    def handlers(self) -> dict[str, Handler]:
        return {
            "OpenPort": unary(pb.OpenPortRequest, self.open_port),
            "ReadPort": unary(pb.ReadPortRequest, self.read_port),
            "WritePort": unary(pb.WritePortRequest, self.write_port),
            "ClosePort": unary(pb.ClosePortRequest, self.close_port),
        }
