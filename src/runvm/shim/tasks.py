"""A task's processes as the shim tracks them: state, host stdio relays, exit.

Contract of :class:`Proc`: ``attach`` starts relaying its guest stdio to the host ends;
``watch`` waits (in the background) for the guest process to exit, then drains its output
(the exit is reported only after the last byte went out), closes the host ends, records the
status, calls ``on_exit`` and wakes every ``wait``. ``start_lock`` is held by Start while the
start event is published, and by the exit path before it publishes, so the exit of a process
never overtakes its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2

from runvm.errors import AgentError, RpcError
from runvm.protocol.client import AgentClient
from runvm.runtime.container import Container
from runvm.runtime.iorelay import pump_output, pump_owned_input
from runvm.shim import shim_api_pb2 as spb
from runvm.shim import wire
from runvm.shim.stdio import HostStdio

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 5.0
LOST_STATUS = 255  # the VM died under the process


@dataclass
class Proc:
    container_id: str
    exec_id: str  # "" = the init process
    io: spb.TaskIO
    pid: int = 0  # what containerd sees: the VM's (QEMU's) PID
    guest_pid: int = 0
    status: spb.Status = spb.CREATED
    exit_status: int = 0
    exited_at: timestamp_pb2.Timestamp | None = None
    process: dict[str, Any] = field(default_factory=dict)  # exec: the OCI process
    host: HostStdio | None = None
    start_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stdin_stop: asyncio.Event = field(default_factory=asyncio.Event)
    outputs: list[asyncio.Future[int]] = field(default_factory=list)
    stdin_pump: asyncio.Future[None] | None = None
    watcher: asyncio.Future[None] | None = None
    _null: int | None = None

    @property
    def event_id(self) -> str:
        return self.exec_id or self.container_id

    def attach(self, agent: AgentClient) -> None:
        assert self.host is not None
        cid, eid = self.container_id, self.exec_id
        streams = [("stdout", self.host.stdout)]
        if not self.io.terminal:
            streams.append(("stderr", self.host.stderr))
        for name, fd in streams:
            if fd is None:  # not wanted: still drained, or the process would block
                if self._null is None:
                    self._null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                fd = self._null
            self.outputs.append(
                asyncio.ensure_future(pump_output(agent, cid, eid, name, fd, owned=True))
            )
        if self.host.stdin is not None:
            self.stdin_pump = asyncio.ensure_future(
                pump_owned_input(agent, cid, eid, self.host.stdin, self.stdin_stop)
            )

    async def close_stdin(self, agent: AgentClient) -> None:
        """End the process's input after what was written so far (CloseIO)."""
        self.stdin_stop.set()
        if self.stdin_pump is not None:
            await asyncio.wait([self.stdin_pump], timeout=DRAIN_TIMEOUT)
        else:
            with contextlib.suppress(RpcError, AgentError):
                await agent.close_stdin(self.container_id, self.exec_id)

    def watch(self, agent: AgentClient, on_exit: Callable[[Proc], Awaitable[None]]) -> None:
        self.watcher = asyncio.ensure_future(self._watch(agent, on_exit))

    async def _watch(self, agent: AgentClient, on_exit: Callable[[Proc], Awaitable[None]]) -> None:
        try:
            reply = await agent.wait_process(self.container_id, self.exec_id)
            status, when_ns = reply.status, reply.exited_at_ns
        except (AgentError, RpcError, OSError) as exc:
            log.error("%s: lost the process: %s", self.event_id, exc)
            status, when_ns = LOST_STATUS, time.time_ns()
        if self.outputs:
            await asyncio.wait(self.outputs, timeout=DRAIN_TIMEOUT)
        await self.release()
        async with self.start_lock:
            self.exit_status = wire.exit_status(status) if status >= 0 else LOST_STATUS
            when = datetime.fromtimestamp((when_ns or time.time_ns()) / 1e9, UTC)
            self.exited_at = wire.timestamp(when)
            await on_exit(self)  # the exit event is queued before anyone can see "stopped"
            self.status = spb.STOPPED  # (and so before a Delete, which needs "stopped")
        self.exited.set()

    async def release(self) -> None:
        """Stop the relays, then close the host ends (idempotent). The fds close only after
        the relays let go of them: a closed fd number is reused at once (by the next
        connection), and a relay unregistering "its" fd later would silence the new user."""
        relays = [t for t in (*self.outputs, self.stdin_pump) if t is not None]
        for task in relays:
            task.cancel()
        if relays:
            await asyncio.gather(*relays, return_exceptions=True)
        if self.host is not None:
            self.host.close()
        if self._null is not None:
            os.close(self._null)
            self._null = None

    def state(self, bundle: str, paused: bool) -> spb.StateResponse:
        status: spb.Status = spb.PAUSED if paused and self.status == spb.RUNNING else self.status
        response = spb.StateResponse(
            id=self.container_id, bundle=bundle, pid=self.pid, status=status,
            stdin=self.io.stdin, stdout=self.io.stdout, stderr=self.io.stderr,
            terminal=self.io.terminal, exit_status=self.exit_status, exec_id=self.exec_id,
        )  # fmt: skip
        if self.exited_at is not None:
            response.exited_at.CopyFrom(self.exited_at)
        return response


@dataclass
class Task:
    """One container of the pod: its init process, its execs, its rootfs mounts."""

    id: str
    bundle: Path
    kind: str | None
    init: Proc
    container: Container | None = None
    execs: dict[str, Proc] = field(default_factory=dict)
    rootfs_mounted: bool = False
    paused: bool = False
    oom_watch: asyncio.Future[None] | None = None
    oom_seen: int = 0  # OOM kills already published

    def proc(self, exec_id: str) -> Proc | None:
        return self.execs.get(exec_id) if exec_id else self.init
