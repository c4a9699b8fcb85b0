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
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError, Message

from runvm import config as cfg
from runvm import files
from runvm.cli.monitor import SERVICE
from runvm.cli.monitor import monitor_pb2 as mpb
from runvm.cli.monitor.attach import (
    FORWARDED,
    attach,
    copy_size,
    is_devnull,
    open_terminal,
    restore,
)
from runvm.errors import RpcError, RunvmError
from runvm.metrics import SERVICE as METRICS_SERVICE
from runvm.metrics import owner as metrics_owner
from runvm.metrics.figures import PodFigures
from runvm.network import netns
from runvm.protocol import AGENT_SERVICE
from runvm.protocol import agent_pb2 as pb
from runvm.protocol.client import AgentClient
from runvm.runtime import debug
from runvm.runtime.checkpoint import CheckpointOptions, RestoreOptions
from runvm.runtime.container import Container
from runvm.runtime.lifecycle import require
from runvm.runtime.pod import Pod
from runvm.runtime.proc import LOST_STATUS
from runvm.runtime.sandbox import sandbox_run_dir
from runvm.runtime.state import ContainerState, StateStore, Status
from runvm.runtime.telemetry import pod_figures
from runvm.spawn import ReadyPipe
from runvm.ttrpc import CallContext, Code, Handler, Server, code_for

log = logging.getLogger(__name__)

# The agent API for this container, re-served to the CLI's own helpers (`runvm exec` stands
# in for an exec process and speaks the process calls; ps, update, events ask the rest).
PROXIED: dict[str, type[Message]] = {
    **debug.METHODS,  # an exec's calls
    "ListProcesses": pb.ListProcessesRequest,
    "StatsContainer": pb.StatsContainerRequest,
}
CLOSE_GRACE = 0.3
LEFTOVERS = "network.json"  # in the sandbox run directory


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
    restore: RestoreOptions | None = None  # `restore`: its start restores this checkpoint


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
        # monitor_main placed us; the logs stay until `runvm delete`
        self.pod = Pod(args.container_id, args.config, place=False, keep_logs=True)
        self.container: Container | None = None
        self.tty_fd: int | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    # --- helpers -------------------------------------------------------------------------
    @property
    def agent(self) -> AgentClient:
        assert self.container is not None
        return self.container.process.agent

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _record_leftovers(self) -> None:
        """Name what a kill -9 of this process would leave in the pod's namespace, for
        ``delete`` (``cli.common.clean_sandbox_dir``)."""
        if self.pod.sandbox is not None:
            path = self.pod.sandbox.run_dir / LEFTOVERS
            files.write_atomic(path, json.dumps(self.pod.leftovers()).encode())

    def _save(self, status: Status) -> None:
        self.state.status = status
        self.store.save(self.state)

    # --- control API -------------------------------------------------------------------
    async def _start(self, payload: bytes, ctx: CallContext) -> bytes:
        assert self.container is not None
        container = self.container
        try:
            container.process.require("start")
            await copy_size(container.process, self.tty_fd)  # the size set after create
            container.on_started = lambda: self._save(Status.RUNNING)
            warnings = await container.start()
        except RunvmError as exc:
            raise RpcError(code_for(exc), str(exc)) from exc
        return mpb.StartResponse(warnings=warnings).SerializeToString()

    async def _checkpoint(self, payload: bytes, ctx: CallContext) -> bytes:
        assert self.container is not None
        try:
            r = mpb.CheckpointRequest.FromString(payload)
        except DecodeError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"Checkpoint: {exc}") from exc
        opts = CheckpointOptions(Path(r.image_path), Path(r.work_path), r.leave_running,
                                 r.tcp_established, r.file_locks)  # fmt: skip
        try:
            await self.container.checkpoint(opts)
        except RunvmError as exc:
            raise RpcError(code_for(exc), str(exc)) from exc
        return mpb.Empty().SerializeToString()

    async def _kill(self, payload: bytes, ctx: CallContext) -> bytes:
        request = mpb.KillRequest.FromString(payload)
        try:
            await self.pod.kill(self.state.id, "", request.signal, request.all)
        except RunvmError as exc:
            raise RpcError(code_for(exc), str(exc)) from exc
        return mpb.Empty().SerializeToString()

    async def _pause(self, payload: bytes, ctx: CallContext) -> bytes:
        assert self.container is not None
        try:
            if ctx.method == "PauseContainer":
                await self.container.pause()
            else:
                await self.container.resume()
        except RunvmError as exc:
            raise RpcError(code_for(exc), str(exc)) from exc
        self._save(self.container.state)
        return pb.Empty().SerializeToString()

    async def _update(self, payload: bytes, ctx: CallContext) -> bytes:
        """New limits: the pod resizes its VM around the guest cgroup's update."""
        try:
            request = pb.UpdateContainerRequest.FromString(payload)
        except DecodeError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"UpdateContainer: {exc}") from exc
        if request.container_id != self.state.id:
            raise RpcError(Code.NOT_FOUND, "container does not exist")
        try:
            await self.pod.update(self.state.id, request.resources_json)
        except RunvmError as exc:
            raise RpcError(code_for(exc), str(exc)) from exc
        return pb.Empty().SerializeToString()

    def _proxy(self, method: str, request_type: type[Message]) -> Handler:
        """Forward one agent call about this container (execs and their I/O, ps)."""

        async def handler(payload: bytes, ctx: CallContext) -> bytes:
            try:
                request = request_type.FromString(payload)
            except DecodeError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, f"{method}: {exc}") from exc
            if getattr(request, "container_id", None) != self.state.id:
                raise RpcError(Code.NOT_FOUND, "container does not exist")
            if method == "ExecProcess":
                try:
                    require("exec", self.state.status, f"container {self.state.id}")
                except RunvmError as exc:
                    raise RpcError(code_for(exc), str(exc)) from exc
            return await self.agent.forward(AGENT_SERVICE, method, payload, ctx.timeout)

        return handler

    async def _figures(self, budget: float) -> list[PodFigures]:
        """For the metrics daemon: this container's VM, as its one owner sees it."""
        return [await pod_figures(self.pod, "monitor", budget)]

    def _forward(self, signum: int) -> None:
        if signum == signal.SIGWINCH and self.container is not None:
            self._spawn(copy_size(self.container.process, self.tty_fd))
        elif self.container is not None:
            self._spawn(self._signal(signum))

    async def _signal(self, signum: int) -> None:
        assert self.container is not None
        with contextlib.suppress(RunvmError):
            await self.container.process.signal(signum)

    # --- the recipe ------------------------------------------------------------------------
    async def _setup(self) -> tuple[Server, asyncio.AbstractServer]:
        cid = self.state.id
        terminal = bool(self.spec["process"].get("terminal"))
        if terminal and not (self.args.console_socket or self.args.foreground_tty):
            raise RunvmError("cannot allocate tty if runvm will detach without setting "
                             "console socket")  # fmt: skip
        stdin_open = terminal or not is_devnull(0)
        self.container = container = await self.pod.create(
            cid, self.args.bundle, stdin=stdin_open, host_pid=os.getpid(),
            hooks_log=self.dir / "hooks.log", restore=self.args.restore,
        )  # fmt: skip
        assert self.pod.sandbox is not None
        self.state.sandbox_dir = str(self.pod.sandbox.run_dir)
        loop = asyncio.get_running_loop()
        for signum in (*FORWARDED, signal.SIGWINCH):  # before the terminal: no resize is lost
            loop.add_signal_handler(signum, self._forward, signum)
        if terminal:
            self.tty_fd = open_terminal(self.args.console_socket, self.args.foreground_tty)
            await copy_size(container.process, self.tty_fd)
        attach(container.process, self.tty_fd, stdin_open)
        await self.pod.sandbox.sync_network()  # interfaces a create hook added (Docker's veth)
        self.pod.on_change = self._record_leftovers
        self._record_leftovers()
        server = Server()
        server.register(SERVICE, {"Start": self._start, "Kill": self._kill,
                                  "Checkpoint": self._checkpoint})  # fmt: skip
        server.register(AGENT_SERVICE, {
            **{m: self._proxy(m, t) for m, t in PROXIED.items()},
            "PauseContainer": self._pause, "ResumeContainer": self._pause,
            "UpdateContainer": self._update,
        })  # fmt: skip
        server.register(METRICS_SERVICE, metrics_owner.handlers(self._figures))
        server.register(debug.SERVICE, debug.handlers(self.args.config, lambda: [self.pod]))
        listener = await server.serve_unix(str(self.state.monitor_socket()))
        self._save(Status.CREATED)
        return server, listener

    async def run(self) -> int:
        try:
            try:
                server, listener = await self._setup()
            except BaseException as exc:
                self.ready.error(str(exc))
                raise
            self.ready.ok()
            assert self.container is not None
            status = await self.container.process.wait()  # its output drained
            if status == LOST_STATUS and self.container.process.lost:
                log.error("lost the container: %s", self.pod.failure or
                          self.container.process.lost)  # fmt: skip
            self.state.exit_status = status
            self._save(Status.STOPPED)
            listener.close()  # no new clients; requests in flight (the Kill that ended it) finish
            await asyncio.sleep(CLOSE_GRACE)
            server.close()
            return status
        finally:
            for task in list(self.tasks):
                task.cancel()
            await self.pod.close()
            if self.state.sandbox_dir:
                self.state.monitor_socket().unlink(missing_ok=True)
            restore(self.tty_fd)


def _log_to_sandbox(args: MonitorArgs) -> None:
    """Records of INFO and up also go to the sandbox's ``monitor.log`` (once its run
    directory exists); the command's own log keeps its level."""
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setLevel(max(handler.level, root.level))
    run_dir = sandbox_run_dir(args.config, args.container_id)
    sandbox_log = files.StampedHandler(run_dir / "monitor.log",
                                       prefix=f"runvm-monitor[{os.getpid()}] ")  # fmt: skip
    sandbox_log.setLevel(logging.INFO)
    root.addHandler(sandbox_log)
    root.setLevel(min(root.level, logging.INFO))


def monitor_main(args: MonitorArgs, ready: ReadyPipe) -> int:
    """Body of the forked monitor (see runvm.spawn); returns the container's status."""
    _log_to_sandbox(args)
    netns.apply(args.spec)
    return asyncio.run(Monitor(args, ready).run())
