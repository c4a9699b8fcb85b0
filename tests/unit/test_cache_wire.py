"""The cache socket's message format and the pool's record files (pure logic)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runvm.cache import records, wire
from runvm.process import start_time


def test_messages_round_trip_within_the_limit() -> None:
    message = {"op": "take", "run_dir": "/run/runvm/sandboxes/a", "key": {"vcpus": 1}}
    assert wire.decode(wire.encode(message).rstrip(b"\n")) == message
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.encode({"x": "y" * wire.LINE_MAX})


@pytest.mark.parametrize(("line", "words"), [
    (b"", "not JSON"), (b"{", "not JSON"), (b"\xff\xfe", "not JSON"), (b"[]", "not a JSON object"),
    (b'"take"', "not a JSON object"), (b"x" * (wire.LINE_MAX + 1), "exceeds"),
])  # fmt: skip
def test_malformed_messages_are_refused(line: bytes, words: str) -> None:
    with pytest.raises(wire.WireError, match=words):
        wire.decode(line)


def test_records_round_trip_and_bad_ones_are_dropped(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    records.write(directory, "cache-a", tmp_path / "a", None)
    records.write(directory, "cache-b", tmp_path / "b", (os.getpid(), 42))
    (directory / "junk.json").write_text("{not json")
    (directory / "wrong.json").write_text(json.dumps({"vm": 3}))
    got = {r["vm"]: r for r in records.read_all(directory)}
    assert set(got) == {"cache-a", "cache-b"}
    assert got["cache-a"]["peer"] is None and got["cache-b"]["peer"] == [os.getpid(), 42]
    assert sorted(p.name for p in directory.iterdir()) == ["cache-a.json", "cache-b.json"]
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    records.remove(directory, "cache-a")
    records.remove(directory, "cache-a")  # idempotent
    assert [r["vm"] for r in records.read_all(directory)] == ["cache-b"]


def test_a_process_identity_is_its_pid_and_start_time() -> None:
    me = start_time(os.getpid())
    assert me is not None
    assert records.alive([os.getpid(), me])
    assert not records.alive([os.getpid(), me + 1])  # the pid, reused by another process
    assert not records.alive(None) and not records.alive([0, me]) and not records.alive("x")
    assert records.qemu_of("cache-no-such-vm") is None
