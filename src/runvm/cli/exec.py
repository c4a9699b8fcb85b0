"""`runvm exec [flags] ID [CMD...]`: run another process in a running container.

The process runs in the guest; on the host an *exec helper* (forked from this command) stands
for it: it relays the process's stdio to the fds this command was given (or a terminal), its
PID goes to ``--pid-file``, and it exits with the process's status (like runc's exec'd
process, so a subreaper such as containerd's shim can wait for it). It reaches the guest
through the container's monitor, the one owner of the agent connection. Without ``--detach``
this command waits for the helper and exits with its status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runvm.cli import common
from runvm.cli.create import write_pid_file
from runvm.cli.monitor.attach import (
    FORWARDED,
    attach,
    copy_size,
    is_devnull,
    open_terminal,
    restore,
)
from runvm.cli.run import forward_signals, wait_forwarding
from runvm.errors import RpcError, RunvmError
from runvm.oci import parse_process
from runvm.protocol.client import AgentClient
from runvm.runtime.proc import LOST_STATUS, Process
from runvm.runtime.state import Status
from runvm.spawn import ReadyPipe, fork_helper
from runvm.ttrpc import Client

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("exec", help="run a process in a running container")
    p.add_argument("-p", "--process", type=Path, help="OCI process JSON file")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("--pid-file", type=Path)
    p.add_argument("--console-socket")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("--cwd")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-u", "--user", help="uid[:gid]")
    p.add_argument("-g", "--additional-gids", action="append", type=int, default=[])
    p.add_argument("-c", "--cap", action="append", default=[])
    p.add_argument("--no-new-privs", action="store_true")
    p.add_argument("--preserve-fds", type=int, default=0)
    p.add_argument("--ignore-paused", action="store_true")
    p.add_argument("--apparmor")
    p.add_argument("--process-label")
    p.add_argument("--cgroup")
    p.add_argument("container_id", metavar="ID")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def build_process(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    """The OCI process to run: ``--process`` as given, else the container's with overrides."""
    if args.process:
        try:
            return parse_process(args.process.read_bytes(), str(args.process))
        except OSError as exc:
            raise RunvmError(f"{args.process}: {exc.strerror}") from exc
    if not args.command:
        raise RunvmError("exec needs a command or --process")
    proc = json.loads(json.dumps(base))
    proc["args"] = list(args.command)
    proc["terminal"] = bool(args.tty)
    env = {e.partition("=")[0]: e for e in proc.get("env", [])}
    env.update({e.partition("=")[0]: e for e in args.env})
    proc["env"] = list(env.values())
    if args.cwd:
        proc["cwd"] = args.cwd
    if args.user:
        uid, _, gid = args.user.partition(":")
        proc["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if args.additional_gids:
        proc.setdefault("user", {"uid": 0, "gid": 0})["additionalGids"] = args.additional_gids
    if args.cap:
        caps = proc.setdefault("capabilities", {})
        for kind in ("bounding", "effective", "permitted"):
            caps[kind] = sorted(set(caps.get(kind, [])) | set(args.cap))
    if args.no_new_privs:
        proc["noNewPrivileges"] = True
    return parse_process(json.dumps(proc).encode(), "exec process")


class ExecRelay:
    """A guest process started through ``connect``'s agent API and stood for here: its
    stdio relayed to this process's fds (or a terminal: ``console_socket``'s, else ours),
    the signals this process gets forwarded, its status returned."""

    def __init__(self, connect: Callable[[], Awaitable[AgentClient]], cid: str,
                 process: dict[str, Any], console_socket: str | None = None,
                 detach: bool = False) -> None:  # fmt: skip
        self.connect, self.cid, self.process = connect, cid, process
        self.console_socket, self.detach = console_socket, detach
        self.eid = uuid.uuid4().hex[:16]
        self.tasks: set[asyncio.Future[Any]] = set()

    def _later(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _forward(self, process: Process, signum: int) -> None:
        self._later(self._signal(process, signum))

    def _resize(self, process: Process, tty_fd: int | None) -> None:
        self._later(copy_size(process, tty_fd))

    async def _signal(self, process: Process, signum: int) -> None:
        with contextlib.suppress(RunvmError):
            await process.signal(signum)

    async def run(self, ready: ReadyPipe | None = None) -> int:
        agent = await self.connect()
        terminal = bool(self.process.get("terminal"))
        stdin_open = terminal or not is_devnull(0)
        process = Process(agent, self.cid, self.eid, self.process, stdin_open)
        tty_fd = None
        try:
            if terminal:
                tty_fd = open_terminal(self.console_socket, not self.detach)
            try:
                await process.start_exec()
            except RpcError as exc:
                raise RunvmError(exc.message) from exc
            await copy_size(process, tty_fd)
            attach(process, tty_fd, stdin_open)
            loop = asyncio.get_running_loop()
            for signum in FORWARDED:
                loop.add_signal_handler(signum, self._forward, process, signum)
            loop.add_signal_handler(signal.SIGWINCH, self._resize, process, tty_fd)
            if ready is not None:
                ready.ok()
            process.watch(_reported)
            status = await process.wait()  # its output drained
            if status == LOST_STATUS and process.lost:  # the VM (or its monitor) went away
                log.error("lost the process: the container's VM stopped (%s)", process.lost)
            return status
        finally:
            await process.release()
            restore(tty_fd)
            await agent.close()


async def _reported(process: Process) -> None:
    """The exit needs no report beyond this helper's own exit status."""


def run(args: argparse.Namespace) -> int:
    if args.preserve_fds:
        raise RunvmError("--preserve-fds is not supported: a VM cannot inherit host fds")
    st = common.store(args)
    state = st.load(args.container_id)
    if state.effective_status() != Status.RUNNING:
        raise RunvmError(f"cannot exec in a container that is {state.effective_status().value}")
    base = json.loads((Path(state.bundle) / "config.json").read_text()).get("process", {})
    sock = str(state.monitor_socket())

    async def connect() -> AgentClient:
        return AgentClient(await Client.connect_unix(sock), timeout=120)

    helper = ExecRelay(connect, args.container_id, build_process(args, base),
                       args.console_socket, args.detach)  # fmt: skip
    # The process may run before the helper is known: signals wait (blocked) until they can
    # be forwarded to it, rather than end this command.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)

    def body(ready: ReadyPipe) -> int:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return asyncio.run(helper.run(ready))

    try:
        pid = fork_helper(body)
        if not args.detach:
            forward_signals(pid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    if args.pid_file:
        write_pid_file(args.pid_file, pid)
    if args.detach:
        return 0
    return wait_forwarding(pid)
