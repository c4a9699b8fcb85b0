"""An async ttrpc client: concurrent unary calls multiplexed over one connection.

The peer is not trusted. A background task reads every frame and validates it; anything
malformed (garbage header, oversized frame, undecodable Response, a frame type a unary client
never receives) closes the connection, and every pending call fails with the cause. Pending
calls never hang on a dead connection: they fail with :class:`ConnectionError` (peer gone,
client closed) or :class:`~runvm.errors.ProtocolError` (peer spoke garbage).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import DecodeError

from runvm.errors import FrameTooLarge, ProtocolError, RpcError
from runvm.ttrpc.codec import MAX_MESSAGE, Frame, MessageType, encode_frame, read_frame
from runvm.ttrpc.status import Code
from runvm.ttrpc.ttrpc_pb2 import KeyValue, Request, Response

_MAX_STREAM_ID = 0xFFFF_FFFF
FRAME_TIMEOUT = 30.0
"""Seconds a frame may take from its first byte to its last (see ``read_frame``)."""
ABANDONED_MAX = 1024
"""Calls given up on (timeout, cancellation) whose late answer is still accepted, then dropped."""


class Client:
    """A ttrpc client over an established stream pair; construct it inside a running loop.

    Stream ids are odd, from 1 in steps of 2. Responses are matched by stream id only, so
    they may come back in any order. A call given up on (timeout, cancellation) may still
    get its one late answer, which is dropped and counted in ``dropped``; any other response
    (a stream never used, a second answer) is a protocol error that closes the connection.
    A frame must be complete within ``frame_timeout`` seconds of its first byte (default
    :data:`FRAME_TIMEOUT`, read when the client is made).

    ``leftovers=True`` is for a transport without connection boundaries (a virtio-serial
    port): until the first answer arrives, responses on streams this client never used are
    a previous client's, written before the server knew it was gone, and are dropped
    (counted in ``dropped``) instead of breaking the connection; and the first answered
    stream may get one more answer (the previous client's used the same id), also dropped.
    The caller makes its first call one whose answer is the same for every client.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_message: int = MAX_MESSAGE,
        frame_timeout: float | None = None,
        leftovers: bool = False,
    ) -> None:
        self._reader = reader
        self._leftovers = leftovers
        self._writer = writer
        self.max_message = max_message
        self.frame_timeout = FRAME_TIMEOUT if frame_timeout is None else frame_timeout
        self.dropped = 0
        self._abandoned: dict[int, None] = {}  # insertion-ordered: the oldest goes first
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._write_lock = asyncio.Lock()
        self._error: BaseException | None = None
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read_loop(), name="ttrpc-client-reader"
        )

    @classmethod
    async def connect_unix(cls, path: str, **kw: Any) -> Client:
        """Connect to a ttrpc server on a unix socket; ``kw`` go to the constructor."""
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer, **kw)

    @property
    def error(self) -> BaseException | None:
        """Why the connection ended (None while it is open)."""
        return self._error

    @property
    def closed(self) -> bool:
        """True once the connection is closed or broken; calls then fail at once."""
        return self._error is not None

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> bytes:
        """Call ``service/method`` with a serialized request; return the serialized response.

        Raises :class:`RpcError` for a non-OK status, :class:`TimeoutError` when ``timeout``
        seconds pass without an answer (the server is told the same deadline through
        ``timeout_nano``), :class:`FrameTooLarge` if the request exceeds ``max_message``, and
        ConnectionError/ProtocolError when the connection closes or breaks.
        """
        self._raise_if_closed()
        request = Request(
            service=service,
            method=method,
            payload=payload,
            timeout_nano=0 if timeout is None else max(1, int(timeout * 1e9)),
            metadata=[KeyValue(key=k, value=v) for k, v in (metadata or {}).items()],
        )
        data = request.SerializeToString()
        if len(data) > self.max_message:
            raise FrameTooLarge(len(data), self.max_message)
        if self._next_id > _MAX_STREAM_ID:
            raise ProtocolError("ttrpc: stream ids exhausted on this connection; reconnect")
        stream_id = self._next_id
        self._next_id += 2
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            async with asyncio.timeout(timeout):
                await self._send(Frame(stream_id, MessageType.REQUEST, 0, data))
                response = await future
        except TimeoutError:
            raise TimeoutError(f"ttrpc: {service}/{method}: no response in {timeout}s") from None
        finally:
            del self._pending[stream_id]
            if not future.done():
                future.cancel()
            if future.cancelled():  # given up on: its answer may still come, once
                self._abandon(stream_id)
            else:
                future.exception()  # an outcome that lost the race to a timeout: mark it seen
        if response.HasField("status") and response.status.code != Code.OK:
            raise RpcError(response.status.code, response.status.message)
        return response.payload

    def _abandon(self, stream_id: int) -> None:
        self._abandoned[stream_id] = None
        if len(self._abandoned) > ABANDONED_MAX:
            del self._abandoned[next(iter(self._abandoned))]

    def fail(self, error: ProtocolError) -> None:
        """Break the connection because of ``error`` (a peer whose answer made no sense):
        pending and later calls fail with it, and it becomes :attr:`error`."""
        self._shutdown(error)
        self._reader_task.cancel()

    async def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionError. Idempotent."""
        self._reader_task.cancel()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed (by :meth:`close`, the peer, or an error)."""
        await asyncio.wait([self._reader_task])
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    def _raise_if_closed(self) -> None:
        if self._error is not None:
            raise self._wrap(self._error)

    @staticmethod
    def _wrap(error: BaseException) -> Exception:
        """A fresh exception per failed call, chained to the one that broke the connection."""
        new: Exception
        if isinstance(error, ProtocolError):
            new = ProtocolError(f"ttrpc: connection failed: {error}")
        else:
            new = ConnectionError(f"ttrpc: {error}" if str(error) else "ttrpc: connection lost")
        new.__cause__ = error
        return new

    async def _send(self, frame: Frame) -> None:
        raw = encode_frame(frame)
        async with self._write_lock:
            self._raise_if_closed()
            try:
                self._writer.write(raw)
                await self._writer.drain()
            except OSError as exc:
                self._shutdown(exc)
                raise self._wrap(exc) from exc

    async def _read_loop(self) -> None:
        error: BaseException = ConnectionError("client closed")
        try:
            while True:
                frame = await read_frame(self._reader, self.max_message, self.frame_timeout)
                if frame is None:
                    error = ConnectionError("connection closed by peer")
                    return
                self._dispatch(frame)
        except Exception as exc:
            error = exc
        finally:
            self._shutdown(error)

    def _dispatch(self, frame: Frame) -> None:
        if frame.type != MessageType.RESPONSE:
            raise ProtocolError(
                f"ttrpc: unexpected message type {frame.type} on stream {frame.stream_id}"
            )
        try:
            response = Response.FromString(frame.data)
        except DecodeError as exc:
            raise ProtocolError(
                f"ttrpc: malformed response on stream {frame.stream_id}: {exc}"
            ) from exc
        future = self._pending.get(frame.stream_id)
        if future is not None and not future.done():
            future.set_result(response)
            if self._leftovers:  # a previous client's reply on the same stream may have been
                self._leftovers = False  # this one: the other answer is then dropped once
                self._abandon(frame.stream_id)
        elif self._leftovers and frame.stream_id >= self._next_id:
            self.dropped += 1
        elif frame.stream_id in self._abandoned:
            del self._abandoned[frame.stream_id]
            self.dropped += 1
        else:
            raise ProtocolError(
                f"ttrpc: response on stream {frame.stream_id}, which has no request outstanding"
            )

    def _shutdown(self, error: BaseException) -> None:
        """Mark the connection dead, fail every pending call, close the transport."""
        if self._error is not None:
            return
        self._error = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._wrap(error))
        self._writer.close()
