"""A fake agent for unit tests of the host's runtime core: the calls of
:class:`~runvm.protocol.client.AgentClient` the core makes, with the behaviour of the real
agent that the core relies on, in memory and without a VM.

What it does as the agent does: a created container's init waits until StartContainer; a
signal that kills (SIGKILL, SIGTERM, SIGINT) ends the process with 128+N; WaitProcess blocks
until the process ended; output streams end (``b""``) once the process ended and its queued
output was read; unknown containers and processes are NOT_FOUND; pause, resume and stats
act on the container. ``calls`` records every call by name, in order, so a test can check
what the core asked and when; ``fail`` maps a call name to the error it raises next.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runvm.errors import RpcError, RunvmError
from runvm.protocol import agent_pb2 as pb
from runvm.ttrpc import Code

KILLING = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT}


@dataclass
class FakeProcess:
    pid: int
    spec: dict[str, object] = field(default_factory=dict)
    started: bool = False
    status: int | None = None
    output: dict[str, list[bytes]] = field(default_factory=lambda: {"stdout": [], "stderr": []})
    stdin: bytearray = field(default_factory=bytearray)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def exit(self, status: int) -> None:
        if self.status is None:
            self.status = status
        self.changed.set()


@dataclass
class FakeContainer:
    spec: dict[str, object]
    procs: dict[str, FakeProcess] = field(default_factory=dict)
    paused: bool = False
    resources: bytes = b""
    oom_kills: int = 0


class _FakeConn:
    """What the core reads of the ttrpc connection: its error, and its end."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.closed = asyncio.Event()

    async def wait_closed(self) -> None:
        await self.closed.wait()


class FakeAgent:
    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.calls: list[str] = []
        self.fail: dict[str, RunvmError] = {}
        self.conn = _FakeConn()
        self.instance_id = "0" * 32
        self.cpus_online = 0
        self.memory_current = 4096  # what every container's StatsContainer reports
        self.sandbox: pb.CreateSandboxRequest | None = None
        self.on_destroy: Callable[[], None] = lambda: None
        self._next_pid = 100

    # --- test controls ---------------------------------------------------------------------
    def process(self, container_id: str, exec_id: str = "") -> FakeProcess:
        return self._proc(container_id, exec_id)

    def exit(self, container_id: str, exec_id: str = "", status: int = 0) -> None:
        """The guest process ends by itself with ``status``."""
        self._proc(container_id, exec_id).exit(status)

    def emit(self, container_id: str, data: bytes, stream: str = "stdout") -> None:
        proc = self._proc(container_id, "")
        proc.output[stream].append(data)
        proc.changed.set()

    # --- plumbing ------------------------------------------------------------------------------
    def _call(self, name: str) -> None:
        self.calls.append(name)
        failure = self.fail.pop(name, None)
        if failure is not None:
            raise failure

    def _container(self, container_id: str) -> FakeContainer:
        found = self.containers.get(container_id)
        if found is None:
            raise RpcError(Code.NOT_FOUND, f"container {container_id} does not exist")
        return found

    def _proc(self, container_id: str, exec_id: str) -> FakeProcess:
        proc = self._container(container_id).procs.get(exec_id)
        if proc is None:
            raise RpcError(Code.NOT_FOUND, f"process {exec_id} of {container_id} does not exist")
        return proc

    def _pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    async def close(self) -> None:
        self.conn.closed.set()

    # --- the calls ------------------------------------------------------------------------------
    async def create_container(self, request: pb.CreateContainerRequest) -> int:
        self._call("CreateContainer")
        if request.container_id in self.containers:
            raise RpcError(Code.ALREADY_EXISTS, f"container {request.container_id} exists")
        spec = json.loads(request.oci_spec_json)
        init = FakeProcess(self._pid(), spec.get("process") or {})
        self.containers[request.container_id] = FakeContainer(spec, {"": init})
        return init.pid

    async def start_container(self, container_id: str) -> int:
        self._call("StartContainer")
        init = self._proc(container_id, "")
        if init.started:
            raise RpcError(Code.FAILED_PRECONDITION, f"container {container_id} already started")
        init.started = True
        return init.pid

    async def remove_container(self, container_id: str, timeout: int = 0) -> None:
        self._call("RemoveContainer")
        container = self.containers.pop(container_id, None)
        if container is None:
            raise RpcError(Code.NOT_FOUND, f"container {container_id} does not exist")
        for proc in container.procs.values():
            proc.exit(128 + signal.SIGKILL)

    async def exec_process(self, request: pb.ExecProcessRequest) -> int:
        self._call("ExecProcess")
        container = self._container(request.container_id)
        if request.exec_id in container.procs:
            raise RpcError(Code.ALREADY_EXISTS, f"exec {request.exec_id} exists")
        proc = FakeProcess(self._pid(), json.loads(request.process_json), started=True)
        container.procs[request.exec_id] = proc
        return proc.pid

    async def signal_process(
        self, container_id: str, exec_id: str, signum: int, all_processes: bool = False
    ) -> None:
        self._call("SignalProcess")
        container = self._container(container_id)
        targets = list(container.procs.values()) if all_processes else [
            self._proc(container_id, exec_id)]  # fmt: skip
        for proc in targets:
            if signum in KILLING and (signum == signal.SIGKILL or not container.paused):
                proc.exit(128 + signum)

    async def wait_process(self, container_id: str, exec_id: str = "") -> pb.WaitProcessResponse:
        self._call("WaitProcess")
        proc = self._proc(container_id, exec_id)
        while proc.status is None:
            proc.changed.clear()
            await proc.changed.wait()
        return pb.WaitProcessResponse(status=proc.status, exited_at_ns=time.time_ns())

    async def read_stream(self, stream: str, container_id: str, exec_id: str = "") -> bytes:
        proc = self._proc(container_id, exec_id)
        while not proc.output[stream] and proc.status is None:
            proc.changed.clear()
            await proc.changed.wait()
        return proc.output[stream].pop(0) if proc.output[stream] else b""

    async def write_stdin(self, container_id: str, exec_id: str, data: bytes) -> int:
        self._proc(container_id, exec_id).stdin += data
        return len(data)

    async def close_stdin(self, container_id: str, exec_id: str = "") -> None:
        self._call("CloseStdin")
        self._proc(container_id, exec_id)

    async def tty_win_resize(self, container_id: str, exec_id: str, rows: int, cols: int) -> None:
        self._call("TtyWinResize")
        self._proc(container_id, exec_id)

    async def list_processes(self, container_id: str) -> list[int]:
        self._call("ListProcesses")
        procs = self._container(container_id).procs.values()
        return [p.pid for p in procs if p.status is None]

    async def pause_container(self, container_id: str) -> None:
        self._call("PauseContainer")
        self._container(container_id).paused = True

    async def resume_container(self, container_id: str) -> None:
        self._call("ResumeContainer")
        self._container(container_id).paused = False

    async def update_container(self, container_id: str, resources_json: bytes) -> None:
        self._call("UpdateContainer")
        self._container(container_id).resources = resources_json

    async def stats_container(self, container_id: str) -> pb.StatsContainerResponse:
        self._call("StatsContainer")
        container = self._container(container_id)
        return pb.StatsContainerResponse(cpu_usage_usec=1, memory_current=self.memory_current,
                                         paused=container.paused,
                                         memory_oom_kills=container.oom_kills)  # fmt: skip

    async def wait_oom(self, container_id: str, seen: int) -> int:
        container = self._container(container_id)
        while container.oom_kills <= seen:
            await asyncio.sleep(0.01)
            if self.containers.get(container_id) is not container:
                raise RpcError(Code.NOT_FOUND, f"container {container_id} was removed")
        return container.oom_kills

    # --- the sandbox -----------------------------------------------------------------------
    async def guest_details(self) -> pb.GuestDetailsResponse:
        self._call("GuestDetails")
        return pb.GuestDetailsResponse(kernel_release="fake", instance_id=self.instance_id,
                                       agent_version="fake")  # fmt: skip

    async def online_cpus(self, wanted: int, timeout: float) -> pb.GuestResources:
        self._call("OnlineCPUs")
        self.cpus_online = wanted
        return pb.GuestResources(cpus_online=wanted)

    async def resume_clone(self, request: pb.ResumeCloneRequest) -> pb.GuestDetailsResponse:
        self._call("ResumeClone")
        self.instance_id = request.instance_id
        return await self.guest_details()

    async def create_sandbox(self, request: pb.CreateSandboxRequest) -> None:
        self._call("CreateSandbox")
        self.sandbox = request

    async def destroy_sandbox(self, timeout: float = 10.0) -> None:
        self._call("DestroySandbox")
        self.on_destroy()  # the guest powers off
