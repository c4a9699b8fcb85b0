"""The shim's host stdio ends, the stdin relay's fd handling, and the event publisher."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from runvm.errors import ConfigError
from runvm.runtime.iorelay import pump_owned_input
from runvm.shim import shim_api_pb2 as spb
from runvm.shim import wire
from runvm.shim.events import Publisher
from runvm.shim.stdio import open_stdio
from runvm.ttrpc import CallContext, Server


def test_fifos_open_without_a_peer_and_stay_usable(tmp_path: Path) -> None:
    names = [tmp_path / n for n in ("in", "out", "err")]
    for path in names:
        os.mkfifo(path)
    io = open_stdio(str(names[0]), str(names[1]), str(names[2]), "c1", "ns")
    try:
        assert io.stdin is not None and io.stdout is not None and io.stderr is not None
        reader = os.open(names[1], os.O_RDONLY | os.O_NONBLOCK)
        os.write(io.stdout, b"hello")
        assert os.read(reader, 10) == b"hello"
        os.close(reader)
    finally:
        io.close()
    assert io.stdout is None


def test_file_uri_appends_both_streams(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "c.log"
    io = open_stdio("", f"file://{path}", f"file://{path}", "c1", "ns")
    assert io.stdout is not None and io.stdout == io.stderr
    os.write(io.stdout, b"a\n")
    io.close()
    assert path.read_text() == "a\n"


def test_binary_uri_starts_the_logger_with_fds_3_4_5(tmp_path: Path) -> None:
    script = tmp_path / "logger"
    script.write_text('#!/bin/sh\nexec 5>&-\ncat <&3 >"$2.out" & cat <&4 >"$2.err"; wait\n'
                      'echo "$CONTAINER_ID/$CONTAINER_NAMESPACE $1" >"$2.env"\n')  # fmt: skip
    script.chmod(0o755)
    io = open_stdio("", f"binary://{script}?to={tmp_path}/x", "", "c9", "ns9")
    assert io.stdout is not None and io.stderr is not None
    os.write(io.stdout, b"out\n")
    os.write(io.stderr, b"err\n")
    io.close()  # EOF for the logger, which is then reaped
    assert (tmp_path / "x.out").read_text() == "out\n"
    assert (tmp_path / "x.err").read_text() == "err\n"
    assert (tmp_path / "x.env").read_text() == "c9/ns9 to\n"


def test_bad_uris_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown scheme 'http'"):
        open_stdio("", "http://x/y", "", "c", "n")
    with pytest.raises(ConfigError, match="not an executable"):
        open_stdio("", f"binary://{tmp_path}/missing", "", "c", "n")
    with pytest.raises(ConfigError, match=r"stdin .*/nope: No such file"):
        open_stdio(str(tmp_path / "nope"), "", "", "c", "n")
    never_ready = tmp_path / "sleepy"
    never_ready.write_text("#!/bin/sh\nexec sleep 30\n")
    never_ready.chmod(0o755)
    import runvm.shim.stdio as stdio

    old = stdio.READY_TIMEOUT, stdio.EXIT_GRACE
    stdio.READY_TIMEOUT = stdio.EXIT_GRACE = 0.3
    try:
        with pytest.raises(ConfigError, match="did not signal ready"):
            open_stdio("", f"binary://{never_ready}", "", "c", "n")
    finally:
        stdio.READY_TIMEOUT, stdio.EXIT_GRACE = old


class FakeAgent:
    """Records stdin traffic (the relay's logic is under test, not the agent)."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    async def write_stdin(self, cid: str, eid: str, data: bytes) -> int:
        self.data += data
        return len(data)

    async def close_stdin(self, cid: str, eid: str) -> None:
        self.closed = True


def test_stdin_relay_copies_what_came_before_the_stop_then_closes() -> None:
    async def run() -> tuple[FakeAgent, bool]:
        r, w = os.pipe()
        agent = FakeAgent()
        stop = asyncio.Event()
        pump = asyncio.ensure_future(pump_owned_input(agent, "c", "", r, stop))  # type: ignore[arg-type]
        os.write(w, b"one ")
        await asyncio.sleep(0.05)
        os.write(w, b"two")
        stop.set()
        await asyncio.wait_for(pump, 2)
        registered = r in asyncio.get_running_loop()._selector.get_map()  # type: ignore[attr-defined]
        os.close(r)
        os.close(w)
        return agent, registered

    agent, registered = asyncio.run(run())
    assert agent.data == b"one two" and agent.closed
    assert not registered


def test_cancelled_stdin_relay_leaves_no_registration_behind() -> None:
    """A cancelled relay must unregister its fd before the fd is closed and reused."""

    async def run() -> bool:
        r, w = os.pipe()
        pump = asyncio.ensure_future(
            pump_owned_input(FakeAgent(), "c", "", r, asyncio.Event())  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.05)
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        registered = r in asyncio.get_running_loop()._selector.get_map()  # type: ignore[attr-defined]
        os.close(r)
        os.close(w)
        return bool(registered)

    assert asyncio.run(run()) is False


def test_publisher_forwards_in_order_and_retries_until_the_daemon_is_back(tmp_path: Path) -> None:
    sock = str(tmp_path / "events.sock")
    got: list[tuple[str, str]] = []

    async def forward(payload: bytes, ctx: CallContext) -> bytes:
        envelope = spb.ForwardRequest.FromString(payload).envelope
        got.append((envelope.topic, envelope.event.type_url))
        return b""

    async def run() -> list[str]:
        publisher = Publisher(f"unix://{sock}", "ns1")
        publisher.publish(spb.TaskCreate(container_id="c"))  # nobody listens yet
        publisher.publish(spb.TaskStart(container_id="c"))
        await asyncio.sleep(0.4)
        server = Server()
        server.register(wire.EVENTS_SERVICE, {wire.FORWARD_METHOD: forward})
        await server.serve_unix(sock)
        publisher.publish(spb.TaskExit(container_id="c", id="c"))
        await publisher.flush(10)
        await publisher.close()
        server.close()
        return publisher.sent

    sent = asyncio.run(run())
    assert sent == ["/tasks/create", "/tasks/start", "/tasks/exit"]
    assert got == [("/tasks/create", "containerd.events.TaskCreate"),
                   ("/tasks/start", "containerd.events.TaskStart"),
                   ("/tasks/exit", "containerd.events.TaskExit")]  # fmt: skip


def test_publisher_without_address_only_logs(caplog: Any) -> None:
    async def run() -> list[str]:
        publisher = Publisher("", "ns")
        publisher.publish(spb.TaskOOM(container_id="c"))
        await publisher.flush(2)
        await publisher.close()
        return publisher.sent

    assert asyncio.run(run()) == []
