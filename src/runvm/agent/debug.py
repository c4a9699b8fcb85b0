"""Debug shells: busybox's ``sh`` in the guest itself, outside every container, for an operator.

Contract: :meth:`DebugShells.start` runs the process an ``ExecProcess`` without a container
id asks for, only in a sandbox created with ``debug_console`` (else FAILED_PRECONDITION):
``args[0]`` names a busybox applet (``sh`` by default), run by the image's static busybox in
the agent's own namespaces and root, with the applets first on ``PATH``; of the process's
environment only ``TERM`` is taken. With ``terminal`` the shell gets a pty as its
controlling terminal (it leads a new session), else pipes. Its I/O, signals and exit go
through the calls a container's execs use (:meth:`get` finds it). At most
:data:`MAX_SHELLS` are kept; exited ones are forgotten when the next one starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

from runvm.agent.proc import Proc
from runvm.agent.reaper import Reaper
from runvm.agent.stdio import InputStream, OutputStream
from runvm.errors import RpcError
from runvm.protocol import DEBUG_OFF
from runvm.ttrpc import Code

log = logging.getLogger("runvm.agent")

BUSYBOX = "/bin/busybox"  # static, from the image (Debian's busybox-static)
APPLETS = Path("/run/runvm/debug/bin")
MAX_SHELLS = 8
MAX_ARGS = 256
Actions = list[tuple[Any, ...]]


class DebugShells:
    def __init__(self, reaper: Reaper) -> None:
        self.reaper = reaper
        self.enabled = False  # CreateSandbox's debug_console
        self.shells: dict[str, Proc] = {}
        self._applets = False

    def get(self, exec_id: str) -> Proc:
        try:
            return self.shells[exec_id]
        except KeyError:
            raise RpcError(Code.NOT_FOUND, f"debug shell {exec_id!r} not found") from None

    async def start(self, exec_id: str, process: dict[str, Any], stdin: bool) -> Proc:
        if not self.enabled:
            raise RpcError(Code.FAILED_PRECONDITION, DEBUG_OFF)
        if exec_id in self.shells:
            raise RpcError(Code.ALREADY_EXISTS, f"debug shell {exec_id} already exists")
        for done in [e for e, p in self.shells.items() if p.exited.is_set()]:
            self.shells.pop(done).close()
        if len(self.shells) >= MAX_SHELLS:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"{MAX_SHELLS} debug shells are running")
        args = [str(a) for a in process.get("args") or ["sh"]][:MAX_ARGS]
        env = {"PATH": f"{APPLETS}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/",
               "PS1": r"runvm-debug:\w\$ ", "TERM": "linux"}  # fmt: skip
        for item in process.get("env") or []:
            key, _, value = str(item).partition("=")
            if key == "TERM":
                env[key] = value
        proc = Proc(exec_id=exec_id)
        try:
            await self._install_applets()
            actions = self._pty(proc) if process.get("terminal") else self._pipes(proc, stdin)
            try:
                proc.pid = os.posix_spawn(BUSYBOX, [BUSYBOX, *args], env, setsid=True,
                                          file_actions=actions)  # fmt: skip
            finally:
                for action in actions:  # the child's ends, now the child's alone
                    if action[0] == os.POSIX_SPAWN_DUP2 and action[1] > 2:
                        with contextlib.suppress(OSError):
                            os.close(action[1])
        except OSError as exc:
            proc.close()
            raise RpcError(Code.FAILED_PRECONDITION, f"debug shell {args[0]}: {exc}") from exc
        self.reaper.watch(proc.pid, proc.on_exit)
        self.shells[exec_id] = proc
        log.warning("debug shell %s started: %s (pid %d)", exec_id, " ".join(args), proc.pid)
        return proc

    def _pty(self, proc: Proc) -> Actions:
        """A pty for ``proc``; the child opens the slave by name after ``setsid``, which
        makes it the child's controlling terminal."""
        master, slave = os.openpty()
        name = os.ttyname(slave)
        os.close(slave)
        proc.pty_master = master
        proc.stdout = OutputStream(os.dup(master))
        proc.stdin = InputStream(os.dup(master))
        return [(os.POSIX_SPAWN_OPEN, 0, name, os.O_RDWR, 0),
                (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2)]  # fmt: skip

    def _pipes(self, proc: Proc, stdin: bool) -> Actions:
        return [(os.POSIX_SPAWN_DUP2, end, i) for i, end in enumerate(proc.pipes(stdin))]

    async def _install_applets(self) -> None:
        """Link busybox's applets into a directory of their own, once."""
        if self._applets:
            return
        APPLETS.mkdir(parents=True, exist_ok=True)
        if await self.reaper.run([BUSYBOX, "--install", "-s", str(APPLETS)], {}) != 0:
            raise OSError(f"{BUSYBOX} --install failed")
        self._applets = True

    def signal(self, exec_id: str, signum: int) -> None:
        """``signum`` to the shell's whole session (its jobs too)."""
        proc = self.get(exec_id)
        if proc.exited.is_set():
            raise RpcError(Code.NOT_FOUND, "process already finished")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    def close(self) -> None:
        for proc in self.shells.values():
            if not proc.exited.is_set():
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.close()
        self.shells.clear()
