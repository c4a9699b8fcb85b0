"""The agent protocol: generated code is current, and the host facade's checks."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import runvm.protocol
from runvm.errors import AgentError, AgentTimeout, RpcError, VersionMismatch
from runvm.protocol import AGENT_SERVICE, HEALTH_SERVICE, PROTOCOL_VERSION
from runvm.protocol import agent_pb2 as pb
from runvm.protocol.client import READ_CHUNK, AgentClient
from runvm.ttrpc import CallContext, Client, Code, Server

PACKAGE = Path(runvm.protocol.__file__).parent


@pytest.mark.skipif(shutil.which("protoc") is None, reason="protoc is not installed")
def test_generated_code_matches_proto(tmp_path: Path) -> None:
    subprocess.run(
        ["protoc", "-I.", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", "agent.proto"],
        cwd=PACKAGE,
        check=True,
    )
    for name in ("agent_pb2.py", "agent_pb2.pyi"):
        assert (tmp_path / name).read_text() == (PACKAGE / name).read_text(), f"{name} is stale"


Handler = Callable[[bytes, CallContext], Awaitable[bytes]]


async def _with_agent(
    handlers: dict[tuple[str, str], Handler], body: Callable[[AgentClient], Awaitable[Any]]
) -> Any:
    server = Server()
    by_service: dict[str, dict[str, Handler]] = {}
    for (service, method), fn in handlers.items():
        by_service.setdefault(service, {})[method] = fn
    for service, methods in by_service.items():
        server.register(service, methods)
    a, b = socket.socketpair()
    sreader, swriter = await asyncio.open_connection(sock=a)
    serving = asyncio.ensure_future(server.serve_connection(sreader, swriter))
    creader, cwriter = await asyncio.open_connection(sock=b)
    agent = AgentClient(Client(creader, cwriter), timeout=2)
    try:
        return await body(agent)
    finally:
        await agent.close()
        server.close()
        serving.cancel()


def reply(message: Any) -> Handler:
    async def handler(payload: bytes, ctx: CallContext) -> bytes:
        return message.SerializeToString()  # type: ignore[no-any-return]

    return handler


def test_handshake_accepts_our_version_and_refuses_another() -> None:
    good = {(HEALTH_SERVICE, "Version"): reply(pb.VersionResponse(protocol=PROTOCOL_VERSION))}
    assert asyncio.run(_with_agent(good, lambda a: a.handshake())).protocol == PROTOCOL_VERSION
    bad = {(HEALTH_SERVICE, "Version"): reply(pb.VersionResponse(agent_version="x", protocol=7))}
    with pytest.raises(VersionMismatch, match="speaks protocol 7"):
        asyncio.run(_with_agent(bad, lambda a: a.handshake()))


def test_oversized_read_is_refused() -> None:
    big = {
        (AGENT_SERVICE, "ReadStdout"): reply(pb.ReadStreamResponse(data=b"x" * (READ_CHUNK + 1)))
    }
    with pytest.raises(AgentError, match="bytes for a"):
        asyncio.run(_with_agent(big, lambda a: a.read_stream("stdout", "c1")))


def test_undecodable_reply_timeout_and_status() -> None:
    async def garbage(payload: bytes, ctx: CallContext) -> bytes:
        return b"\xff\xff\xff"

    async def slow(payload: bytes, ctx: CallContext) -> bytes:
        await asyncio.sleep(10)
        return b""

    async def missing(payload: bytes, ctx: CallContext) -> bytes:
        raise RpcError(Code.NOT_FOUND, "container c1 not found")

    handlers: dict[tuple[str, str], Handler] = {
        (AGENT_SERVICE, "GuestDetails"): garbage,
        (HEALTH_SERVICE, "Check"): slow,
        (AGENT_SERVICE, "StartContainer"): missing,
    }
    with pytest.raises(AgentError, match="undecodable"):
        asyncio.run(_with_agent(handlers, lambda a: a.guest_details()))
    with pytest.raises(AgentTimeout, match=r"within 0\.2 s"):
        asyncio.run(_with_agent(handlers, lambda a: a.check(timeout=0.2)))
    with pytest.raises(RpcError) as err:
        asyncio.run(_with_agent(handlers, lambda a: a.start_container("c1")))
    assert err.value.code == Code.NOT_FOUND


@pytest.mark.parametrize("status", [256, -1, 2**31 - 1])
def test_impossible_exit_status_breaks_the_link(status: int) -> None:
    handlers = {
        (AGENT_SERVICE, "WaitProcess"): reply(pb.WaitProcessResponse(status=status)),
        (HEALTH_SERVICE, "Check"): reply(pb.HealthCheckResponse()),
    }

    async def wait_then_check(agent: AgentClient) -> str:
        with pytest.raises(AgentError, match=r"outside 0\.\.255"):
            await agent.wait_process("c1")
        with pytest.raises(AgentError, match=r"outside 0\.\.255"):  # the link is gone
            await agent.check()
        return "checked"

    assert asyncio.run(_with_agent(handlers, wait_then_check)) == "checked"
