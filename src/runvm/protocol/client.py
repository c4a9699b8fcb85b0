"""Typed host-side facade over a ttrpc connection to the agent.

Contract: every method sends one request and returns the decoded response message.
A deadline that passes raises :class:`AgentTimeout`; a lost or broken connection raises
:class:`AgentError`; a non-OK status raises :class:`RpcError` with the agent's code.
Responses are parsed from untrusted bytes; a payload that does not decode is an AgentError
and breaks the connection (every later call fails too). Every request, typed or
:meth:`~AgentClient.forward`-ed, is reported to ``on_call(method, seconds, outcome)`` once it
ends (outcome ``""`` answered, ``"timeout"``, ``"lost"`` or ``"rpc"``: a non-OK status).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import NoReturn, TypeVar

from google.protobuf.message import DecodeError, Message

from runvm import __version__
from runvm.errors import AgentError, AgentTimeout, ProtocolError, RpcError, VersionMismatch
from runvm.protocol import AGENT_SERVICE, HEALTH_SERVICE, PROTOCOL_VERSION
from runvm.protocol import agent_pb2 as pb
from runvm.ttrpc import Client

M = TypeVar("M", bound=Message)

DEFAULT_TIMEOUT = 60.0
CRIU_TIMEOUT = 900.0  # a checkpoint or restore of a container's whole memory, emulated
READ_CHUNK = 64 * 1024


def _unobserved(method: str, seconds: float, outcome: str) -> None:
    return None


class AgentClient:
    """One agent connection. Owned by exactly one host process (monitor or shim).

    ``service`` and ``metadata``: where the agent calls go, and what goes with each; a client
    of an owner that re-serves part of the API under another name (``runvm debug``) sets them.
    """

    def __init__(
        self,
        conn: Client,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        service: str = AGENT_SERVICE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.conn = conn
        self.timeout = timeout
        self.service = service
        self.metadata = dict(metadata or {})
        self.on_call: Callable[[str, float, str], None] = _unobserved

    async def close(self) -> None:
        await self.conn.close()

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        timeout: float | bool | None = True,
    ) -> M:
        """Send ``request``; ``timeout=True`` means the client default, None no deadline."""
        deadline = self.timeout if timeout is True else (None if timeout is False else timeout)
        try:
            raw = await self.forward(service, method, request.SerializeToString(), deadline)
        except TimeoutError as exc:
            raise AgentTimeout(f"agent did not answer {method} within {deadline:g} s") from exc
        except (ConnectionError, ProtocolError, EOFError) as exc:
            raise AgentError(f"agent connection lost during {method}: {exc}") from exc
        response = response_type()
        try:
            response.ParseFromString(raw)
        except DecodeError:
            self._reject(f"undecodable {method} response")
        return response

    async def forward(
        self, service: str, method: str, payload: bytes, timeout: float | None
    ) -> bytes:
        """One serialized request as it is (a proxy's), timed; the connection's errors
        propagate unchanged (TimeoutError, ConnectionError, ProtocolError, RpcError)."""
        start, outcome = time.monotonic(), "lost"
        try:
            raw = await self.conn.call(service, method, payload, timeout=timeout,
                                       metadata=self.metadata)  # fmt: skip
            outcome = ""
            return raw
        except TimeoutError:
            outcome = "timeout"
            raise
        except RpcError:
            outcome = "rpc"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"  # given up on by the caller: no latency to tell
            raise
        finally:
            if outcome != "cancelled":
                self.on_call(method, time.monotonic() - start, outcome)

    def _reject(self, what: str) -> NoReturn:
        """An answer that makes no sense: the agent is broken or hostile, drop the link."""
        self.conn.fail(ProtocolError(f"agent: {what}"))
        raise AgentError(f"agent sent a bad answer: {what}")

    def _agent(
        self, method: str, request: Message, rtype: type[M], timeout: float | bool | None = True
    ) -> Awaitable[M]:
        return self.call(self.service, method, request, rtype, timeout)

    # --- health and identity -------------------------------------------------------------
    async def check(self, timeout: float | bool | None = True) -> pb.HealthCheckResponse:
        return await self.call(
            HEALTH_SERVICE, "Check", pb.CheckRequest(), pb.HealthCheckResponse, timeout
        )

    async def handshake(self, timeout: float | bool | None = True) -> pb.VersionResponse:
        """Exchange versions; raise VersionMismatch unless the agent speaks ours."""
        request = pb.VersionRequest(host_protocol=PROTOCOL_VERSION, host_version=__version__)
        reply = await self.call(HEALTH_SERVICE, "Version", request, pb.VersionResponse, timeout)
        if reply.protocol != PROTOCOL_VERSION:
            raise VersionMismatch(
                f"agent {reply.agent_version!r} speaks protocol {reply.protocol}, host speaks "
                f"{PROTOCOL_VERSION}: rebuild the guest image with `runvm image build`"
            )
        return reply

    async def guest_details(self) -> pb.GuestDetailsResponse:
        return await self._agent("GuestDetails", pb.GuestDetailsRequest(), pb.GuestDetailsResponse)

    async def online_cpus(self, wanted: int, timeout: float) -> pb.GuestResources:
        request = pb.OnlineCPUsRequest(wanted=wanted, timeout_ms=int(timeout * 1000))
        return await self._agent("OnlineCPUs", request, pb.GuestResources, timeout=timeout + 5)

    async def create_sandbox(self, request: pb.CreateSandboxRequest) -> None:
        await self._agent("CreateSandbox", request, pb.Empty)

    async def resume_clone(self, request: pb.ResumeCloneRequest) -> pb.GuestDetailsResponse:
        return await self._agent("ResumeClone", request, pb.GuestDetailsResponse)

    async def destroy_sandbox(self, timeout: float = 10.0) -> None:
        await self._agent("DestroySandbox", pb.DestroySandboxRequest(), pb.Empty, timeout)

    # --- containers and processes ----------------------------------------------------------
    async def create_container(self, request: pb.CreateContainerRequest) -> int:
        return (await self._agent("CreateContainer", request, pb.CreateContainerResponse)).pid

    async def start_container(self, container_id: str) -> int:
        request = pb.StartContainerRequest(container_id=container_id)
        return (await self._agent("StartContainer", request, pb.StartContainerResponse)).pid

    async def checkpoint_container(self, container_id: str, criu: pb.CriuOptions) -> None:
        request = pb.CheckpointContainerRequest(container_id=container_id, criu=criu)
        await self._agent("CheckpointContainer", request, pb.Empty, CRIU_TIMEOUT)

    async def restore_container(self, request: pb.RestoreContainerRequest) -> int:
        return (await self._agent("RestoreContainer", request, pb.CreateContainerResponse,
                                  CRIU_TIMEOUT)).pid  # fmt: skip

    async def remove_container(self, container_id: str, timeout: int = 0) -> None:
        request = pb.RemoveContainerRequest(container_id=container_id, timeout=timeout)
        await self._agent("RemoveContainer", request, pb.Empty)

    async def exec_process(self, request: pb.ExecProcessRequest) -> int:
        return (await self._agent("ExecProcess", request, pb.ExecProcessResponse)).pid

    async def signal_process(
        self, container_id: str, exec_id: str, signal: int, all_processes: bool = False
    ) -> None:
        request = pb.SignalProcessRequest(
            container_id=container_id, exec_id=exec_id, signal=signal, all=all_processes
        )
        await self._agent("SignalProcess", request, pb.Empty)

    async def wait_process(self, container_id: str, exec_id: str = "") -> pb.WaitProcessResponse:
        """Block until the process exits (no deadline, like Kata's WaitProcess). The status
        is an exit code or 128+signal; one outside 0..255 breaks the link (AgentError)."""
        request = pb.WaitProcessRequest(container_id=container_id, exec_id=exec_id)
        reply = await self._agent("WaitProcess", request, pb.WaitProcessResponse, None)
        if not 0 <= reply.status <= 255:
            self._reject(f"WaitProcess status {reply.status} is outside 0..255")
        return reply

    # --- stdio ---------------------------------------------------------------------------------
    async def write_stdin(self, container_id: str, exec_id: str, data: bytes) -> int:
        request = pb.WriteStreamRequest(container_id=container_id, exec_id=exec_id, data=data)
        return (await self._agent("WriteStdin", request, pb.WriteStreamResponse, None)).len

    async def read_stream(self, stream: str, container_id: str, exec_id: str = "") -> bytes:
        """Read from ``stdout`` or ``stderr``; ``b""`` means end of stream."""
        method = {"stdout": "ReadStdout", "stderr": "ReadStderr"}[stream]
        request = pb.ReadStreamRequest(container_id=container_id, exec_id=exec_id, len=READ_CHUNK)
        reply = await self._agent(method, request, pb.ReadStreamResponse, None)
        if len(reply.data) > READ_CHUNK:
            raise AgentError(f"agent returned {len(reply.data)} bytes for a {READ_CHUNK} read")
        return reply.data

    async def close_stdin(self, container_id: str, exec_id: str = "") -> None:
        request = pb.CloseStdinRequest(container_id=container_id, exec_id=exec_id)
        await self._agent("CloseStdin", request, pb.Empty)

    async def list_processes(self, container_id: str) -> list[int]:
        request = pb.ListProcessesRequest(container_id=container_id)
        return list((await self._agent("ListProcesses", request, pb.ListProcessesResponse)).pids)

    async def pause_container(self, container_id: str) -> None:
        await self._agent("PauseContainer", pb.PauseContainerRequest(container_id=container_id),
                          pb.Empty)  # fmt: skip

    async def resume_container(self, container_id: str) -> None:
        await self._agent("ResumeContainer", pb.ResumeContainerRequest(container_id=container_id),
                          pb.Empty)  # fmt: skip

    async def update_container(self, container_id: str, resources_json: bytes) -> None:
        request = pb.UpdateContainerRequest(container_id=container_id,
                                            resources_json=resources_json)  # fmt: skip
        await self._agent("UpdateContainer", request, pb.Empty)

    async def stats_container(self, container_id: str) -> pb.StatsContainerResponse:
        request = pb.StatsContainerRequest(container_id=container_id)
        return await self._agent("StatsContainer", request, pb.StatsContainerResponse)

    async def wait_oom(self, container_id: str, seen: int) -> int:
        """Block (no deadline) until the container had more than ``seen`` OOM kills."""
        request = pb.WaitOOMRequest(container_id=container_id, seen=seen)
        return (await self._agent("WaitOOM", request, pb.WaitOOMResponse, None)).oom_kills

    async def update_interface(self, interface: pb.Interface) -> pb.Interface:
        return await self._agent("UpdateInterface", interface, pb.Interface)

    async def remove_interface(self, interface: pb.Interface) -> None:
        await self._agent("RemoveInterface", interface, pb.Empty)

    async def update_routes(self, routes: list[pb.Route]) -> None:
        await self._agent("UpdateRoutes", pb.UpdateRoutesRequest(routes=routes), pb.Empty)

    async def add_arp_neighbors(self, neighbors: list[pb.ARPNeighbor]) -> None:
        request = pb.AddARPNeighborsRequest(neighbors=neighbors)
        await self._agent("AddARPNeighbors", request, pb.Empty)

    async def tty_win_resize(self, container_id: str, exec_id: str, rows: int, cols: int) -> None:
        request = pb.TtyWinResizeRequest(
            container_id=container_id, exec_id=exec_id, row=rows, column=cols
        )
        await self._agent("TtyWinResize", request, pb.Empty)

    # --- port forwarding ------------------------------------------------------------------
    async def open_port(self, port: int, ipv6: bool = False) -> int:
        """Connect the agent to the guest's loopback at ``port``; the stream's id."""
        request = pb.OpenPortRequest(port=port, ipv6=ipv6)
        return (await self._agent("OpenPort", request, pb.OpenPortResponse)).stream_id

    async def read_port(self, stream_id: int) -> bytes:
        """The next bytes the guest peer sent (no deadline); ``b""`` is end of stream."""
        request = pb.ReadPortRequest(stream_id=stream_id, len=READ_CHUNK)
        reply = await self._agent("ReadPort", request, pb.ReadStreamResponse, None)
        if len(reply.data) > READ_CHUNK:
            self._reject(f"ReadPort returned {len(reply.data)} bytes for a {READ_CHUNK} read")
        return reply.data

    async def write_port(self, stream_id: int, data: bytes) -> None:
        """Send ``data`` to the guest peer; returns once the agent queued it (no deadline:
        a peer that does not read holds the writer back, as TCP does)."""
        request = pb.WritePortRequest(stream_id=stream_id, data=data)
        reply = await self._agent("WritePort", request, pb.WriteStreamResponse, None)
        if reply.len != len(data):
            self._reject(f"WritePort took {reply.len} of {len(data)} bytes")

    async def close_port(self, stream_id: int, write_only: bool = False) -> None:
        request = pb.ClosePortRequest(stream_id=stream_id, write_only=write_only)
        await self._agent("ClosePort", request, pb.Empty)
