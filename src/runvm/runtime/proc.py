"""A process of a container in the guest, as the host tracks it: state, stdio relays, exit.

Contract of :class:`Process` (a container's init, ``exec_id`` "", or one of its execs):
- :meth:`attach` relays the guest process's stdout (and stderr, without a terminal) to host
  fds and a host fd to its stdin. ``owned`` fds are this process's alone (FIFOs, pipes) and
  served by the event loop; others (the caller's own stdio) by threads, never switched to
  non-blocking. An output fd of None is still drained, or the process would block.
- :meth:`watch` waits in the background for the exit, lets the output drain (at most
  :data:`DRAIN_TIMEOUT`), lets go of the relays, records the status (0..255; 128+N for
  signal N; :data:`LOST_STATUS` and ``lost`` when the VM went away) and time, awaits
  ``on_exit``, and only then is the process ``stopped`` and :meth:`wait` returns.
  ``start_lock`` is held by the start path while it reports the start and by the exit path
  before it reports the exit, so no exit overtakes its start.
- Operations check :mod:`runvm.runtime.lifecycle` first: a refused one is a StateError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from runvm.errors import AgentError, RpcError
from runvm.protocol import agent_pb2 as pb
from runvm.protocol.client import AgentClient
from runvm.runtime.iorelay import pump_input, pump_output, pump_owned_input
from runvm.runtime.lifecycle import State, advance, require

DRAIN_TIMEOUT = 5.0
LOST_STATUS = 255


class Process:
    def __init__(
        self,
        agent: AgentClient,
        container_id: str,
        exec_id: str = "",
        spec: dict[str, Any] | None = None,
        stdin: bool = False,
    ) -> None:
        self.agent = agent
        self.container_id = container_id
        self.exec_id = exec_id
        self.spec = spec or {}  # an exec's OCI process
        self.stdin = stdin  # the guest keeps a stdin open
        self.state = State.CREATED
        self.guest_pid = 0
        self.exit_status = 0
        self.exited_at_ns = 0
        self.lost = ""  # why the host lost track of the process (the VM went away), if it did
        self.start_lock = asyncio.Lock()
        self.exited = asyncio.Event()
        self._stdin_stop = asyncio.Event()
        self._outputs: list[asyncio.Future[int]] = []
        self._stdin_pump: asyncio.Future[None] | None = None
        self._watcher: asyncio.Future[None] | None = None
        self._null: int | None = None

    @property
    def name(self) -> str:
        return f"process {self.exec_id} of {self.container_id}" if self.exec_id else \
            f"container {self.container_id}"  # fmt: skip

    def require(self, operation: str) -> None:
        require(operation, self.state, self.name)

    def become(self, state: State) -> None:
        self.state = advance(self.state, state, self.name)

    # --- an exec's start ---------------------------------------------------------------
    async def start_exec(self) -> None:
        """Run this exec process in the guest (the init starts through its Container)."""
        assert self.exec_id, "the init starts through Container.start"
        self.require("start")
        request = pb.ExecProcessRequest(container_id=self.container_id, exec_id=self.exec_id,
                                        stdin=self.stdin,
                                        process_json=json.dumps(self.spec).encode())  # fmt: skip
        self.guest_pid = await self.agent.exec_process(request)
        self.become(State.RUNNING)

    # --- stdio -----------------------------------------------------------------------------
    def attach(
        self,
        stdout: int | None,
        stderr: int | None,
        stdin: int | None,
        terminal: bool,
        owned: bool,
    ) -> None:
        cid, eid, agent = self.container_id, self.exec_id, self.agent
        streams = [("stdout", stdout)] if terminal else [("stdout", stdout), ("stderr", stderr)]
        for name, fd in streams:
            if fd is None:
                if self._null is None:
                    self._null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                fd = self._null
            pump = pump_output(agent, cid, eid, name, fd, owned=owned)
            self._outputs.append(asyncio.ensure_future(pump))
        if stdin is not None:
            relay = (pump_owned_input(agent, cid, eid, stdin, self._stdin_stop) if owned
                     else pump_input(agent, cid, eid, stdin))  # fmt: skip
            self._stdin_pump = asyncio.ensure_future(relay)

    async def close_stdin(self) -> None:
        """End the process's input after what was relayed so far."""
        self._stdin_stop.set()
        if self._stdin_pump is not None:
            await asyncio.wait([self._stdin_pump], timeout=DRAIN_TIMEOUT)
        else:
            with contextlib.suppress(RpcError, AgentError):
                await self.agent.close_stdin(self.container_id, self.exec_id)

    async def resize(self, rows: int, cols: int) -> None:
        """The guest terminal's size; ignored once the process is stopped."""
        if self.state is not State.STOPPED:
            await self.agent.tty_win_resize(self.container_id, self.exec_id, rows, cols)

    async def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Wait for the output relays to end; a failed relay (VM gone) counts as ended."""
        if self._outputs:
            await asyncio.wait(self._outputs, timeout=timeout)

    async def release(self) -> None:
        """Stop the relays (idempotent). The caller closes its fds only after this: a closed
        fd number is reused at once, and a relay that let go of "its" fd later would
        unregister the new user."""
        relays = [t for t in (*self._outputs, self._stdin_pump) if t is not None]
        for task in relays:
            task.cancel()
        if relays:
            await asyncio.gather(*relays, return_exceptions=True)
        if self._null is not None:
            os.close(self._null)
            self._null = None

    # --- signals and exit ------------------------------------------------------------------
    async def signal(self, signum: int, all_processes: bool = False) -> None:
        self.require("kill")
        await self.agent.signal_process(self.container_id, self.exec_id, signum, all_processes)

    def watch(self, on_exit: Callable[[Process], Awaitable[None]]) -> None:
        """Follow the process to its exit in the background (see the module docstring)."""
        self._watcher = asyncio.ensure_future(self._watch(on_exit))

    async def _watch(self, on_exit: Callable[[Process], Awaitable[None]]) -> None:
        try:
            reply = await self.agent.wait_process(self.container_id, self.exec_id)
            status, when_ns = reply.status, reply.exited_at_ns
        except (AgentError, RpcError, OSError) as exc:  # the front end reports it
            self.lost = str(exc)
            status, when_ns = LOST_STATUS, 0
        await self.drain()
        await self.release()
        async with self.start_lock:
            self.exit_status = status
            self.exited_at_ns = when_ns or time.time_ns()
            await on_exit(self)  # reported before anyone can see "stopped"
            self.state = State.STOPPED  # from any state: the process is gone
        self.exited.set()

    async def wait(self) -> int:
        await self.exited.wait()
        return self.exit_status

    def never_ran(self) -> None:
        """An exec whose start failed: stopped without having run (status
        :data:`LOST_STATUS`), so whoever waits for it is answered."""
        self.exit_status, self.exited_at_ns = LOST_STATUS, time.time_ns()
        self.become(State.STOPPED)
        self.exited.set()

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
