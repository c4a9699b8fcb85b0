"""The monitor process: one per CLI container (see the package docstring).

Recipe, in order (each failure before "ready" is reported to ``create`` on ``ready_fd`` and
everything already done is undone):
1. enter or create the container's host network namespace (config.json), so that tools which
   configure ``/proc/<pid>/ns/net`` (prestart hooks) reach the namespace the VM networks from;
2. boot the sandbox VM and create the container in it (blocked until ``start``);
3. wire stdio: the container's streams go to the fds ``create`` was given, or to a host pty
   whose master is sent to ``--console-socket`` exactly as runc does;
4. run the prestart, createRuntime and createContainer hooks;
5. save state ``created``, serve the control socket, say "ready".
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

from runvm import config as cfg
from runvm.cli.monitor import SERVICE, console
from runvm.cli.monitor import monitor_pb2 as mpb
from runvm.errors import AgentError, RpcError, RunvmError
from runvm.network import netns
from runvm.protocol.client import AgentClient
from runvm.runtime import hooks
from runvm.runtime.container import Container
from runvm.runtime.iorelay import pump_input, pump_output
from runvm.runtime.sandbox import Sandbox, SandboxOptions
from runvm.runtime.state import ContainerState, StateStore, Status, require
from runvm.ttrpc import CallContext, Code, Server

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)  # fmt: skip
DRAIN_TIMEOUT = 5.0


@dataclass
class MonitorArgs:
    container_id: str
    bundle: Path
    root: Path
    config: cfg.RunvmConfig
    console_socket: str | None = None
    foreground_tty: bool = False  # `run` in the foreground with a terminal: relay our own tty


class Monitor:
    def __init__(self, args: MonitorArgs, ready_fd: int) -> None:
        self.args = args
        self.ready_fd = ready_fd
        self.store = StateStore(args.root)
        self.dir = self.store.dir(args.container_id)
        self.spec, self.rootfs = Container.load(args.container_id, args.bundle)
        self.state = ContainerState(
            id=args.container_id, bundle=str(args.bundle.resolve()), rootfs=str(self.rootfs),
            annotations=dict(self.spec.get("annotations") or {}),
        )  # fmt: skip
        self.store.record_monitor(self.state, os.getpid())
        self.sandbox: Sandbox | None = None
        self.container: Container | None = None
        self.tty_fd: int | None = None  # host side of the container's terminal
        self.tasks: set[asyncio.Task[Any]] = set()
        self.announced = False  # "ok" was sent to create

    # --- helpers -------------------------------------------------------------------------
    @property
    def agent(self) -> AgentClient:
        assert self.sandbox is not None and self.sandbox.agent is not None
        return self.sandbox.agent

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _ready(self, message: str) -> None:
        if self.ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, message.encode()[:4000])
            os.close(self.ready_fd)
            self.ready_fd = -1

    def _save(self, status: Status) -> None:
        self.state.status = status
        self.store.save(self.state)

    async def _hooks(self, kind: str, warn_only: bool = False) -> None:
        await hooks.run_hooks(self.spec, kind, self.state.oci() | {"pid": os.getpid()},
                              self.dir / "hooks.log", warn_only)  # fmt: skip

    # --- control API -------------------------------------------------------------------
    async def _start(self, payload: bytes, ctx: CallContext) -> bytes:
        try:
            require("start", self.state.status, self.state.id)
        except RunvmError as exc:
            raise RpcError(Code.FAILED_PRECONDITION, str(exc)) from exc
        assert self.container is not None
        await self._hooks("startContainer")
        await self.container.start()
        self._save(Status.RUNNING)
        await self._hooks("poststart")
        return mpb.Empty().SerializeToString()

    async def _kill(self, payload: bytes, ctx: CallContext) -> bytes:
        request = mpb.KillRequest.FromString(payload)
        await self.agent.signal_process(self.state.id, "", request.signal, request.all)
        return mpb.Empty().SerializeToString()

    def _forward(self, signum: int) -> None:
        if signum == signal.SIGWINCH and self.tty_fd is not None:
            self._spawn(self._resize())
        elif self.container is not None:
            self._spawn(self._signal(signum))

    async def _signal(self, signum: int) -> None:
        with contextlib.suppress(RpcError, AgentError):
            await self.agent.signal_process(self.state.id, "", signum)

    async def _resize(self) -> None:
        assert self.tty_fd is not None
        with contextlib.suppress(OSError, RpcError, AgentError):
            size = os.get_terminal_size(self.tty_fd)
            await self.agent.tty_win_resize(self.state.id, "", size.lines, size.columns)

    # --- the recipe ------------------------------------------------------------------------
    async def _setup(self) -> tuple[Server, asyncio.AbstractServer]:
        cid = self.state.id
        terminal = bool(self.spec["process"].get("terminal"))
        if terminal and not (self.args.console_socket or self.args.foreground_tty):
            raise RunvmError("cannot allocate tty if runvm will detach without setting "
                             "console socket")  # fmt: skip
        hostname = self.spec.get("hostname") or cid[:63]
        self.sandbox = await Sandbox.start(cid, self.args.config, SandboxOptions(hostname=hostname))
        self.state.sandbox_dir = str(self.sandbox.run_dir)
        stdin_open = terminal or not _is_devnull(0)
        self.container = await Container.create(self.sandbox, cid, self.args.bundle, stdin_open)
        if terminal:
            if self.args.console_socket:
                self.tty_fd = console.send_new_pty(self.args.console_socket)
            else:
                self.tty_fd = 0
                console.make_raw(0)
            await self._resize()
        out_fd = self.tty_fd if self.tty_fd is not None else 1
        streams = [("stdout", out_fd)] if terminal else [("stdout", out_fd), ("stderr", 2)]
        self.outputs = [
            asyncio.ensure_future(pump_output(self.agent, cid, "", name, fd))
            for name, fd in streams
        ]
        if stdin_open:
            in_fd = self.tty_fd if self.tty_fd is not None else 0
            self._spawn(pump_input(self.agent, cid, "", in_fd))
        for kind in ("prestart", "createRuntime", "createContainer"):
            await self._hooks(kind)
        server = Server()
        server.register(SERVICE, {"Start": self._start, "Kill": self._kill})
        listener = await server.serve_unix(str(self.dir / "monitor.sock"))
        self._save(Status.CREATED)
        loop = asyncio.get_running_loop()
        for signum in (*FORWARDED, signal.SIGWINCH):
            loop.add_signal_handler(signum, self._forward, signum)
        return server, listener

    async def run(self) -> int:
        try:
            try:
                server, listener = await self._setup()
                waiter = asyncio.ensure_future(self.agent.wait_process(self.state.id))
            except BaseException as exc:
                self._ready(f"error: {exc}")
                raise
            self._ready("ok")
            self.announced = True
            try:
                status = (await waiter).status
            except (AgentError, RpcError) as exc:
                log.error("lost the container: %s", exc)
                status = 255
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self.outputs), DRAIN_TIMEOUT)
            self.state.exit_status = status
            self._save(Status.STOPPED)
            server.close()
            listener.close()
            return status
        finally:
            for task in list(self.tasks):
                task.cancel()
            if self.container is not None:
                with contextlib.suppress(Exception):
                    await self.container.remove()
            if self.sandbox is not None:
                await self.sandbox.stop()
            (self.dir / "monitor.sock").unlink(missing_ok=True)
            if self.tty_fd == 0:
                console.restore(0)


def _is_devnull(fd: int) -> bool:
    try:
        st, null = os.fstat(fd), os.stat(os.devnull)
    except OSError:
        return True
    return (st.st_dev, st.st_ino) == (null.st_dev, null.st_ino)


def exit_like(status: int) -> None:
    """Leave with the container's status: exit code, or death by the same signal."""
    if 128 < status < 128 + signal.NSIG and status - 128 not in (signal.SIGKILL, signal.SIGSTOP):
        signum = status - 128
        with contextlib.suppress(Exception):
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
            os.kill(os.getpid(), signum)
    if status == 128 + signal.SIGKILL:
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(status & 0xFF)


def monitor_main(args: MonitorArgs, ready_fd: int) -> None:
    """Entry of the forked monitor; never returns."""
    status = 1
    monitor: Monitor | None = None
    try:
        netns.apply(Container.load(args.container_id, args.bundle)[0])
        monitor = Monitor(args, ready_fd)  # owns ready_fd from here on
        status = asyncio.run(monitor.run())
    except BaseException as exc:  # report, then exit: nothing may escape a forked child
        if monitor is None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, f"error: {exc}".encode()[:4000])
        # Before "ready" the error went to `create`, which prints it; after, only the log has it.
        ready = monitor is not None and monitor.announced
        log.log(logging.ERROR if ready else logging.DEBUG, "monitor: %s", exc)
        status = 1
    finally:
        exit_like(status)
