"""The monitor process: one per CLI container (see the package docstring).

Recipe, in order (each failure before "ready" is reported to ``create`` on ``ready_fd`` and
everything already done is undone):
1. enter or create the container's host network namespace (config.json), so that tools which
   configure ``/proc/<pid>/ns/net`` (prestart hooks) reach the namespace the VM networks from;
2. boot the sandbox VM and create the container in it (blocked until ``start``);
   (the runtime core runs the prestart, createRuntime and createContainer hooks there);
3. wire stdio: the container's streams go to the fds ``create`` was given, or to a host pty
   whose master is sent to ``--console-socket`` exactly as runc does; take in the interfaces
   a hook added to the network namespace;
4. save state ``created``, serve the control socket, say "ready".
Then it serves Start and Kill, forwards the signals it receives to the container's init, and
when the init exits: drains the output, saves ``stopped`` with the exit status, stops the VM,
and exits with the init's status (its exit code, or death by the same signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError, Message

from runvm import config as cfg
from runvm.cli.monitor import SERVICE
from runvm.cli.monitor import monitor_pb2 as mpb
from runvm.cli.monitor.attach import (
    DRAIN_TIMEOUT,
    FORWARDED,
    Attached,
    is_devnull,
    open_terminal,
)  # fmt: skip
from runvm.cli.spawn import ReadyPipe
from runvm.errors import AgentError, RpcError, RunvmError
from runvm.network import netns
from runvm.protocol import AGENT_SERVICE
from runvm.protocol import agent_pb2 as pb
from runvm.protocol.client import AgentClient
from runvm.runtime.container import Container
from runvm.runtime.sandbox import Sandbox, SandboxOptions
from runvm.runtime.state import ContainerState, StateStore, Status, require
from runvm.storage import blockdev
from runvm.ttrpc import CallContext, Code, Handler, Server

log = logging.getLogger(__name__)

PROXIED: dict[str, type[Message]] = {
    "ExecProcess": pb.ExecProcessRequest,
    "SignalProcess": pb.SignalProcessRequest,
    "WaitProcess": pb.WaitProcessRequest,
    "WriteStdin": pb.WriteStreamRequest,
    "ReadStdout": pb.ReadStreamRequest,
    "ReadStderr": pb.ReadStreamRequest,
    "CloseStdin": pb.CloseStdinRequest,
    "TtyWinResize": pb.TtyWinResizeRequest,
    "ListProcesses": pb.ListProcessesRequest,
    "PauseContainer": pb.PauseContainerRequest,
    "ResumeContainer": pb.ResumeContainerRequest,
    "UpdateContainer": pb.UpdateContainerRequest,
    "StatsContainer": pb.StatsContainerRequest,
}
PAUSE_STATES = {"PauseContainer": Status.PAUSED, "ResumeContainer": Status.RUNNING}
CLOSE_GRACE = 0.3


@dataclass
class MonitorArgs:
    container_id: str
    bundle: Path
    root: Path
    config: cfg.RunvmConfig
    spec: dict[str, Any]  # the bundle's config.json, validated by `create` before the fork
    rootfs: Path
    console_socket: str | None = None
    foreground_tty: bool = False  # `run` in the foreground with a terminal: relay our own tty


class Monitor:
    def __init__(self, args: MonitorArgs, ready: ReadyPipe) -> None:
        self.args = args
        self.ready = ready
        self.store = StateStore(args.root)
        self.dir = self.store.dir(args.container_id)
        self.spec, self.rootfs = args.spec, args.rootfs
        self.state = ContainerState(
            id=args.container_id, bundle=str(args.bundle.resolve()), rootfs=str(self.rootfs),
            annotations=dict(self.spec.get("annotations") or {}),
        )  # fmt: skip
        self.store.record_monitor(self.state, os.getpid())
        self.sandbox: Sandbox | None = None
        self.container: Container | None = None
        self.io: Attached | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    # --- helpers -------------------------------------------------------------------------
    @property
    def agent(self) -> AgentClient:
        assert self.sandbox is not None and self.sandbox.agent is not None
        return self.sandbox.agent

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _save(self, status: Status) -> None:
        self.state.status = status
        self.store.save(self.state)

    # --- control API -------------------------------------------------------------------
    async def _start(self, payload: bytes, ctx: CallContext) -> bytes:
        try:
            require("start", self.state.status, self.state.id)
        except RunvmError as exc:
            raise RpcError(Code.FAILED_PRECONDITION, str(exc)) from exc
        assert self.container is not None and self.io is not None
        await self.io.resize()  # the size the caller set after create
        self.container.on_started = lambda: self._save(Status.RUNNING)
        warnings = await self.container.start()
        return mpb.StartResponse(warnings=warnings).SerializeToString()

    async def _kill(self, payload: bytes, ctx: CallContext) -> bytes:
        request = mpb.KillRequest.FromString(payload)
        await self.agent.signal_process(self.state.id, "", request.signal, request.all)
        return mpb.Empty().SerializeToString()

    def _proxy(self, method: str, request_type: type[Message]) -> Handler:
        """Forward one agent call about this container (execs and their I/O, ps)."""

        async def handler(payload: bytes, ctx: CallContext) -> bytes:
            try:
                request = request_type.FromString(payload)
            except DecodeError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, f"{method}: {exc}") from exc
            if getattr(request, "container_id", None) != self.state.id:
                raise RpcError(Code.NOT_FOUND, "container does not exist")
            if method == "ExecProcess" and self.state.status is not Status.RUNNING:
                raise RpcError(Code.FAILED_PRECONDITION, "cannot exec in a stopped container")
            reply = await self.agent.conn.call(AGENT_SERVICE, method, payload, timeout=ctx.timeout)
            if method in PAUSE_STATES:
                self._save(PAUSE_STATES[method])
            return reply

        return handler

    def _forward(self, signum: int) -> None:
        if signum == signal.SIGWINCH and self.io is not None and self.io.tty_fd is not None:
            self._spawn(self.io.resize())
        elif self.container is not None:
            self._spawn(self._signal(signum))

    async def _signal(self, signum: int) -> None:
        with contextlib.suppress(RpcError, AgentError):
            await self.agent.signal_process(self.state.id, "", signum)

    # --- the recipe ------------------------------------------------------------------------
    async def _setup(self) -> tuple[Server, asyncio.AbstractServer]:
        cid = self.state.id
        terminal = bool(self.spec["process"].get("terminal"))
        if terminal and not (self.args.console_socket or self.args.foreground_tty):
            raise RunvmError("cannot allocate tty if runvm will detach without setting "
                             "console socket")  # fmt: skip
        hostname = self.spec.get("hostname") or cid[:63]
        options = SandboxOptions(hostname=hostname, network=netns.network_namespace(self.spec)[0],
                                 needs_hotplug=blockdev.needs_disks(self.spec))  # fmt: skip
        self.sandbox = await Sandbox.start(cid, self.args.config, options)
        self.state.sandbox_dir = str(self.sandbox.run_dir)
        stdin_open = terminal or not is_devnull(0)
        self.container = await Container.create(self.sandbox, cid, self.args.bundle, stdin_open,
                                                host_pid=os.getpid(),
                                                hooks_log=self.dir / "hooks.log")  # fmt: skip
        self.io = Attached(self.agent, cid, "")
        loop = asyncio.get_running_loop()
        for signum in (*FORWARDED, signal.SIGWINCH):  # before the terminal: no resize is lost
            loop.add_signal_handler(signum, self._forward, signum)
        if terminal:
            self.io.tty_fd = open_terminal(self.args.console_socket, self.args.foreground_tty)
            await self.io.resize()
        self.io.start_relay(terminal, stdin_open)
        await self.sandbox.sync_network()  # interfaces a create hook added (Docker's veth)
        server = Server()
        server.register(SERVICE, {"Start": self._start, "Kill": self._kill})
        server.register(AGENT_SERVICE, {m: self._proxy(m, t) for m, t in PROXIED.items()})
        listener = await server.serve_unix(str(self.state.monitor_socket()))
        self._save(Status.CREATED)
        return server, listener

    async def run(self) -> int:
        try:
            try:
                server, listener = await self._setup()
                waiter = asyncio.ensure_future(self.agent.wait_process(self.state.id))
            except BaseException as exc:
                self.ready.error(str(exc))
                raise
            self.ready.ok()
            try:
                status = (await waiter).status
            except (AgentError, RpcError) as exc:
                assert self.sandbox is not None
                log.error("lost the container: %s", self.sandbox.failure or exc)
                status = 255
            assert self.io is not None
            await self.io.drain(DRAIN_TIMEOUT)
            self.state.exit_status = status
            self._save(Status.STOPPED)
            listener.close()  # no new clients; requests in flight (the Kill that ended it) finish
            await asyncio.sleep(CLOSE_GRACE)
            server.close()
            return status
        finally:
            for task in list(self.tasks):
                task.cancel()
            if self.container is not None:
                with contextlib.suppress(Exception):
                    await self.container.remove()
            if self.sandbox is not None:
                await self.sandbox.stop()
            if self.state.sandbox_dir:
                self.state.monitor_socket().unlink(missing_ok=True)
            if self.io is not None:
                self.io.close()


def monitor_main(args: MonitorArgs, ready: ReadyPipe) -> int:
    """Body of the forked monitor (see runvm.cli.spawn); returns the container's status."""
    netns.apply(args.spec)
    return asyncio.run(Monitor(args, ready).run())
