"""ttrpc framing: encoding, the incremental decoder and the stream reader."""

from __future__ import annotations

import asyncio
import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runvm.errors import FrameTooLarge, ProtocolError
from runvm.ttrpc.codec import (
    HEADER_SIZE,
    MAX_MESSAGE,
    Frame,
    FrameDecoder,
    MessageType,
    discard,
    encode_frame,
    read_frame,
)

REQ = MessageType.REQUEST


def header(length: int, stream_id: int = 1, mtype: int = 1, flags: int = 0) -> bytes:
    return struct.pack(">IIBB", length, stream_id, mtype, flags)


def test_encode_frame_layout_is_big_endian_10_byte_header() -> None:
    raw = encode_frame(Frame(0x01020304, MessageType.RESPONSE, 0x05, b"abc"))
    assert raw == b"\x00\x00\x00\x03\x01\x02\x03\x04\x02\x05abc"
    assert MAX_MESSAGE == 4 << 20 and HEADER_SIZE == 10


@pytest.mark.parametrize(
    "frame",
    [
        Frame(1 << 32, REQ, 0, b""),
        Frame(-1, REQ, 0, b""),
        Frame(1, 256, 0, b""),
        Frame(1, 1, 300, b""),
    ],
)
def test_encode_frame_rejects_fields_that_do_not_fit(frame: Frame) -> None:
    with pytest.raises(ValueError):
        encode_frame(frame)


def test_decoder_round_trip_many_frames_in_one_chunk() -> None:
    frames = [
        Frame(1, REQ, 0, b"hello"),
        Frame(3, MessageType.RESPONSE, 0, b""),
        Frame(0xFFFF_FFFF, MessageType.DATA, 0x05, bytes(range(256)) * 10),
    ]
    assert FrameDecoder().feed(b"".join(map(encode_frame, frames))) == frames


def test_decoder_byte_by_byte() -> None:
    frames = [Frame(1, REQ, 0, b"x" * 300), Frame(3, REQ, 1, b""), Frame(5, REQ, 0, b"yz")]
    decoder = FrameDecoder()
    out: list[Frame] = []
    for byte in b"".join(map(encode_frame, frames)):
        out += decoder.feed(bytes([byte]))
    assert out == frames
    assert decoder.pending == 0


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_decoder_any_split(payloads: list[bytes], cuts: list[int]) -> None:
    frames = [Frame(2 * i + 1, REQ, i % 4, p) for i, p in enumerate(payloads)]
    stream = b"".join(map(encode_frame, frames))
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    decoder = FrameDecoder()
    out: list[Frame] = []
    for start, end in itertools.pairwise(bounds):
        out += decoder.feed(stream[start:end])
    assert out == frames


def test_decoder_max_message_is_inclusive() -> None:
    assert (
        FrameDecoder(max_message=4).feed(encode_frame(Frame(1, REQ, 0, b"abcd")))[0].data == b"abcd"
    )


def test_decoder_oversized_raises_at_header_without_waiting_for_data() -> None:
    decoder = FrameDecoder(max_message=16)
    decoder.feed(header(17)[:9])
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(header(17)[9:])
    assert (info.value.length, info.value.limit) == (17, 16)
    assert decoder.pending == 0


def test_decoder_default_limit_rejects_announced_4gib() -> None:
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(header(0xFFFF_FFFF))


def test_decoder_buffers_at_most_one_frame_of_a_huge_chunk() -> None:
    decoder = FrameDecoder(max_message=8)
    chunk = encode_frame(Frame(1, REQ, 0, b"12345678")) + header(9) + b"z" * 1_000_000
    with pytest.raises(FrameTooLarge):
        decoder.feed(chunk)
    assert decoder.pending == 0


@pytest.mark.parametrize("mtype", [0, 4, 0x7F, 0xFF])
def test_decoder_unknown_message_type(mtype: int) -> None:
    with pytest.raises(ProtocolError, match="unknown message type"):
        FrameDecoder().feed(header(0, mtype=mtype))


def test_decoder_stays_failed_after_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(header(0, mtype=9))
    with pytest.raises(ProtocolError):
        decoder.feed(encode_frame(Frame(1, REQ, 0, b"")))


def test_decoder_keeps_partial_frame_pending() -> None:
    decoder = FrameDecoder()
    raw = encode_frame(Frame(7, REQ, 0, b"abcdef"))
    assert decoder.feed(raw[:13]) == []
    assert decoder.pending == 13
    assert decoder.feed(raw[13:]) == [Frame(7, REQ, 0, b"abcdef")]


def reader_with(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def read_all(data: bytes) -> list[Frame]:
    reader = reader_with(data)
    frames = []
    while (frame := await read_frame(reader)) is not None:
        frames.append(frame)
    return frames


def test_read_frame_sequence_then_clean_eof() -> None:
    async def main() -> None:
        frames = [Frame(1, REQ, 0, b"a"), Frame(3, REQ, 0, b"b" * 70_000)]
        reader = reader_with(b"".join(map(encode_frame, frames)))
        assert await read_frame(reader) == frames[0]
        assert await read_frame(reader) == frames[1]
        assert await read_frame(reader) is None

    asyncio.run(main())


def test_read_frame_across_delayed_chunks() -> None:
    async def main() -> None:
        reader = asyncio.StreamReader()
        raw = encode_frame(Frame(9, REQ, 2, b"slow"))
        task = asyncio.create_task(read_frame(reader))
        for byte in raw:
            await asyncio.sleep(0)
            assert not task.done()
            reader.feed_data(bytes([byte]))
        assert await task == Frame(9, REQ, 2, b"slow")

    asyncio.run(main())


@pytest.mark.parametrize(
    "data, match",
    [(header(5)[:4], "mid-header"), (header(5) + b"abc", "mid-frame"), (header(5), "mid-frame")],
)
def test_read_frame_eof_mid_frame(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        asyncio.run(read_all(data))


def test_read_frame_oversized_raises_before_reading_data() -> None:
    async def main() -> None:
        reader = reader_with(header(1025), eof=False)  # no data follows, nor EOF
        with pytest.raises(FrameTooLarge):
            await asyncio.wait_for(read_frame(reader, max_message=1024), 1)

    asyncio.run(main())


def test_read_frame_unknown_type() -> None:
    with pytest.raises(ProtocolError, match="unknown message type 0x9"):
        asyncio.run(read_all(header(0, mtype=9)))


def test_discard_skips_exactly_and_detects_eof() -> None:
    async def main() -> None:
        reader = reader_with(b"x" * 200_000 + encode_frame(Frame(1, REQ, 0, b"next")))
        await discard(reader, 200_000)
        assert await read_frame(reader) == Frame(1, REQ, 0, b"next")
        with pytest.raises(ProtocolError, match="skipping"):
            await discard(reader_with(b"short"), 10)

    asyncio.run(main())
