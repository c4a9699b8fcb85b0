"""An async ttrpc server for unary methods.

Each request runs as its own task; at most ``max_concurrent`` run per connection and the
server stops reading that connection while the limit is reached. Errors follow Go ttrpc
(``protocols.md`` §1.1-1.3): an oversized frame is skipped without buffering and answered
with RESOURCE_EXHAUSTED on its stream; an even or non-increasing stream id, or an
undecodable Request, with INVALID_ARGUMENT; an unknown service or method with UNIMPLEMENTED.
Response and Data frames from a client are ignored. A broken header (unknown message type,
EOF mid-frame) ends the connection. When a connection ends, its running handlers are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from runvm.errors import ProtocolError, RpcError
from runvm.ttrpc.codec import (
    MAX_MESSAGE,
    Frame,
    MessageType,
    discard,
    encode_frame,
    read_exactly,
    read_header,
)
from runvm.ttrpc.status import Code
from runvm.ttrpc.ttrpc_pb2 import Request, Response, Status

log = logging.getLogger(__name__)


@dataclass
class CallContext:
    """What a handler knows about its call besides the payload."""

    service: str
    method: str
    metadata: dict[str, list[str]]
    timeout: float | None
    """The client's deadline in seconds (already enforced by the server), or None."""


Handler = Callable[[bytes, CallContext], Awaitable[bytes]]
"""Takes the serialized request, returns the serialized response; raise RpcError to fail."""


class Server:
    """Dispatches ttrpc requests to handlers registered per service."""

    def __init__(self, *, max_message: int = MAX_MESSAGE, max_concurrent: int = 128) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        self.max_message = max_message
        self.max_concurrent = max_concurrent
        self._services: dict[str, dict[str, Handler]] = {}
        self._connections: set[_Connection] = set()
        self._listeners: list[asyncio.AbstractServer] = []

    def register(self, service: str, methods: Mapping[str, Handler]) -> None:
        """Serve ``methods`` (bare method name -> handler) under the full service name."""
        if service in self._services:
            raise ValueError(f"ttrpc service {service!r} is already registered")
        self._services[service] = dict(methods)

    async def serve_unix(self, path: str) -> asyncio.AbstractServer:
        """Listen on a unix socket at ``path``, mode 0600; :meth:`close` also closes the
        listener."""
        listener = await asyncio.start_unix_server(self.serve_connection, path=path)
        os.chmod(path, 0o600)
        self._listeners.append(listener)
        return listener

    async def serve_connection(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        """Serve one connection until EOF, a broken frame, or :meth:`close`; then close it.

        ``on_restart`` is for a transport without connection boundaries (a virtio-serial
        port, where a host can hang up and another connect before the reader sees EOF): a
        request that reuses a stream id then means a new client started at 1. The old
        client's calls are cancelled as at EOF and their replies dropped, ``on_restart`` is
        called (to drop its unsent bytes) and the stream ids start over. Without it a reused
        id is refused.
        """
        connection = _Connection(self, reader, writer, on_restart)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    async def drain(self, timeout: float) -> None:
        """Wait, at most ``timeout`` seconds, until the calls in flight have been answered."""
        tasks = [task for connection in self._connections for task in connection.tasks()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def close(self) -> None:
        """Stop listening, end every connection and cancel the handlers running on them."""
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for connection in list(self._connections):
            connection.abort()

    def lookup(self, service: str, method: str) -> Handler:
        """Return the handler; RpcError(UNIMPLEMENTED) if the service or method is unknown."""
        methods = self._services.get(service)
        if methods is None:
            raise RpcError(Code.UNIMPLEMENTED, f"service {service}")
        handler = methods.get(method)
        if handler is None:
            raise RpcError(Code.UNIMPLEMENTED, f"method {method}")
        return handler


class _Connection:
    """The state of one served connection."""

    def __init__(
        self,
        server: Server,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_restart: Callable[[], None] | None,
    ) -> None:
        self._server = server
        self._on_restart = on_restart
        self._client = 0  # which client on this connection (see Server.serve_connection)
        self._reader = reader
        self._writer = writer
        self._last_stream_id = 0
        self._slots = asyncio.Semaphore(server.max_concurrent)
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._aborted = False

    def tasks(self) -> list[asyncio.Task[None]]:
        """The calls in flight (each ends once its reply is written)."""
        return list(self._tasks)

    def abort(self) -> None:
        """Cancel the handlers and drop the transport; :meth:`run` then returns."""
        self._aborted = True
        for task in self._tasks:
            task.cancel()
        self._writer.transport.abort()

    async def run(self) -> None:
        try:
            await self._read_loop()
        except (ProtocolError, OSError) as exc:
            if not self._aborted:
                log.warning("ttrpc: dropping connection: %s", exc)
        finally:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks)
            self._writer.close()
            # A pipe transport (the agent's virtio-serial port) cannot wait for its close.
            with contextlib.suppress(OSError, NotImplementedError):
                await self._writer.wait_closed()

    async def _read_loop(self) -> None:
        limit = self._server.max_message
        while not self._aborted and (header := await read_header(self._reader)) is not None:
            if header.length > limit:
                await discard(self._reader, header.length)
                await self._send_status(
                    header.stream_id,
                    Code.RESOURCE_EXHAUSTED,
                    f"message length {header.length} exceed maximum message size of {limit}",
                )
                continue
            data = await read_exactly(self._reader, header.length)
            if header.type != MessageType.REQUEST:
                continue  # unary only: nothing else is meant for a server (Go ttrpc 1.1)
            if header.stream_id % 2 != 1:
                await self._send_status(
                    header.stream_id,
                    Code.INVALID_ARGUMENT,
                    "StreamID must be odd for client initiated streams",
                )
                continue
            if header.stream_id <= self._last_stream_id and self._on_restart is not None:
                log.info("ttrpc: stream %d after %d: a new client", header.stream_id,
                         self._last_stream_id)  # fmt: skip
                self._client += 1
                self._last_stream_id = 0
                for task in self._tasks:  # as at EOF: the old client's calls end
                    task.cancel()
                self._on_restart()
            if header.stream_id <= self._last_stream_id:
                await self._send_status(
                    header.stream_id,
                    Code.INVALID_ARGUMENT,
                    "StreamID cannot be re-used and must increment",
                )
                continue
            self._last_stream_id = header.stream_id
            await self._slots.acquire()
            task = asyncio.create_task(self._handle(header.stream_id, data, self._client))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, stream_id: int, data: bytes, client: int) -> None:
        try:
            payload = await self._dispatch(data)
            response = Response(payload=payload).SerializeToString()
        except RpcError as exc:
            response = _status_response(exc.code, exc.message)
        except Exception as exc:
            log.exception("ttrpc: handler failed on stream %d", stream_id)
            response = _status_response(Code.UNKNOWN, str(exc))
        if len(response) > self._server.max_message:
            response = _status_response(
                Code.RESOURCE_EXHAUSTED,
                f"response length {len(response)} exceeds maximum message size of "
                f"{self._server.max_message}",
            )
        await self._send(stream_id, response, client)

    async def _dispatch(self, data: bytes) -> bytes:
        try:
            request = Request.FromString(data)
        except DecodeError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"malformed request: {exc}") from exc
        handler = self._server.lookup(request.service, request.method)
        metadata: dict[str, list[str]] = {}
        for kv in request.metadata:
            metadata.setdefault(kv.key, []).append(kv.value)
        timeout = request.timeout_nano / 1e9 if request.timeout_nano > 0 else None
        ctx = CallContext(request.service, request.method, metadata, timeout)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await handler(request.payload, ctx)
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise RpcError(
                Code.DEADLINE_EXCEEDED,
                f"{request.method}: the caller's deadline ({timeout:g} s) passed: "
                "context deadline exceeded",
            ) from exc

    async def _send_status(self, stream_id: int, code: Code, message: str) -> None:
        await self._send(stream_id, _status_response(code, message), self._client)

    async def _send(self, stream_id: int, response: bytes, client: int) -> None:
        """Write a Response (dropped if its client is gone); a failed write is left for the
        read loop to notice."""
        frame = encode_frame(Frame(stream_id, MessageType.RESPONSE, 0, response))
        async with self._write_lock:
            if client != self._client:
                log.debug("ttrpc: stream %d's client is gone; reply dropped", stream_id)
                return
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except OSError as exc:
                log.debug("ttrpc: cannot answer stream %d: %s", stream_id, exc)


def _status_response(code: int, message: str) -> bytes:
    return Response(status=Status(code=code, message=message)).SerializeToString()
