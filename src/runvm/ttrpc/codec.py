"""ttrpc framing: a 10-byte big-endian header followed by the message data.

Header layout (``protocols.md`` §1.1): data length (uint32), stream id (uint32), message type
(uint8), flags (uint8). The length counts the data only. Nothing here allocates more than
``max_message`` plus the header for one frame, whatever length a peer announces.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from dataclasses import dataclass

from runvm.errors import FrameTooLarge, ProtocolError

MAX_MESSAGE = 4 << 20
"""Largest data length accepted by default (ttrpc's ``messageLengthMax``)."""

HEADER_SIZE = 10
_HEADER = struct.Struct(">IIBB")
_MAX_U32 = 0xFFFF_FFFF
_DISCARD_CHUNK = 64 << 10


class MessageType(enum.IntEnum):
    """The frame types; DATA exists only in streaming ttrpc (>= 1.2)."""

    REQUEST = 1
    RESPONSE = 2
    DATA = 3


_KNOWN_TYPES = frozenset(int(t) for t in MessageType)

FLAG_REMOTE_CLOSED = 0x01
"""Request/Data: the sender sends no more data on this stream."""
FLAG_REMOTE_OPEN = 0x02
"""Request: the client will follow with Data frames."""
FLAG_NO_DATA = 0x04
"""Data: the frame carries no payload."""


@dataclass(frozen=True)
class Header:
    """A decoded frame header; ``type`` is always a known :class:`MessageType`."""

    length: int
    stream_id: int
    type: int
    flags: int


@dataclass(frozen=True)
class Frame:
    """One ttrpc message: header fields plus the data."""

    stream_id: int
    type: int
    flags: int
    data: bytes


def encode_frame(frame: Frame) -> bytes:
    """Return header + data; raises ValueError if a field does not fit its header slot."""
    if not 0 <= frame.stream_id <= _MAX_U32:
        raise ValueError(f"stream id {frame.stream_id} does not fit in 32 bits")
    if not 0 <= frame.type <= 0xFF or not 0 <= frame.flags <= 0xFF:
        raise ValueError(f"type {frame.type} or flags {frame.flags} do not fit in 8 bits")
    if len(frame.data) > _MAX_U32:
        raise ValueError(f"data length {len(frame.data)} does not fit in 32 bits")
    header = _HEADER.pack(len(frame.data), frame.stream_id, frame.type, frame.flags)
    return header + frame.data


def decode_header(raw: bytes | bytearray | memoryview) -> Header:
    """Decode exactly :data:`HEADER_SIZE` bytes; ProtocolError for an unknown message type."""
    length, stream_id, mtype, flags = _HEADER.unpack(raw)
    if mtype not in _KNOWN_TYPES:
        raise ProtocolError(f"ttrpc: unknown message type {mtype:#x} on stream {stream_id}")
    return Header(length, stream_id, mtype, flags)


class FrameDecoder:
    """Incremental decoder: feed it bytes in chunks of any size, get back whole frames.

    An announced length above ``max_message`` raises :class:`FrameTooLarge` as soon as the
    header is complete, before any of that frame's data is buffered. After an error the byte
    stream cannot be resynchronised: every later :meth:`feed` raises the same error.
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._header: Header | None = None
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """Consume ``data`` and return the frames it completed, in order."""
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except ProtocolError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def _feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        view = memoryview(data)
        while True:
            if self._header is None:
                need = HEADER_SIZE - len(self._buf)
                self._buf += view[:need]
                view = view[need:]
                if len(self._buf) < HEADER_SIZE:
                    return frames
                header = decode_header(self._buf)
                if header.length > self.max_message:
                    raise FrameTooLarge(header.length, self.max_message)
                self._header = header
                self._buf.clear()
            need = self._header.length - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) < self._header.length:
                return frames
            h = self._header
            frames.append(Frame(h.stream_id, h.type, h.flags, bytes(self._buf)))
            self._header = None
            self._buf.clear()

    @property
    def pending(self) -> int:
        """Bytes held for a frame that is not complete yet."""
        return len(self._buf) + (HEADER_SIZE if self._header is not None else 0)


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    """Read ``n`` bytes; ProtocolError if the stream ends first."""
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError(
            f"ttrpc: connection closed mid-frame ({len(exc.partial)} of {n} bytes)"
        ) from None


async def read_header(reader: asyncio.StreamReader) -> Header | None:
    """Read one header; None on clean EOF before its first byte."""
    first = await reader.read(1)
    return await _header_after(first, reader) if first else None


async def _header_after(first: bytes, reader: asyncio.StreamReader) -> Header:
    """The header whose first byte is ``first``; ProtocolError on EOF before its end."""
    try:
        rest = await reader.readexactly(HEADER_SIZE - 1)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError(
            f"ttrpc: connection closed mid-header ({1 + len(exc.partial)} of {HEADER_SIZE} bytes)"
        ) from None
    return decode_header(first + rest)


async def discard(reader: asyncio.StreamReader, n: int) -> None:
    """Skip ``n`` bytes without holding more than 64 KiB of them; ProtocolError on EOF."""
    while n > 0:
        chunk = await reader.read(min(n, _DISCARD_CHUNK))
        if not chunk:
            raise ProtocolError(f"ttrpc: connection closed while skipping {n} bytes")
        n -= len(chunk)


async def read_frame(
    reader: asyncio.StreamReader,
    max_message: int = MAX_MESSAGE,
    stall_timeout: float | None = None,
) -> Frame | None:
    """Read one frame: None on clean EOF at a frame boundary, ProtocolError on EOF mid-frame.

    An announced length above ``max_message`` raises :class:`FrameTooLarge` without reading
    the data; the caller must then :func:`discard` it or drop the connection. With
    ``stall_timeout``, a frame whose first byte has arrived must be complete within that
    many seconds, else ProtocolError (a peer dripping or withholding the rest).
    """
    first = await reader.read(1)
    if not first:
        return None
    try:
        async with asyncio.timeout(stall_timeout):
            header = await _header_after(first, reader)
            if header.length > max_message:
                raise FrameTooLarge(header.length, max_message)
            data = await read_exactly(reader, header.length)
    except TimeoutError:
        raise ProtocolError(
            f"ttrpc: frame stalled: incomplete {stall_timeout:g} s after its first byte"
        ) from None
    return Frame(header.stream_id, header.type, header.flags, data)
