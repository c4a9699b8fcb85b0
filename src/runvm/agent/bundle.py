"""A container's bundle in the guest: the rootfs crun gets (held on a mount of its own),
the VM-wide sysctls its spec asks for, and crun's create/exec with the process's stdio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import uuid
from pathlib import Path

from runvm.agent import crun
from runvm.agent import syscalls as sc
from runvm.agent.proc import Proc
from runvm.agent.reaper import Reaper
from runvm.agent.stdio import InputStream, OutputStream

log = logging.getLogger("runvm.agent")

CONSOLES = Path("/run/runvm/consoles")
EXEC_WAIT = 10.0  # seconds StartContainer waits for the init to execute the user program
SYSCTL_KEY = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$")


def apply_vm_sysctls(spec: dict[str, object]) -> None:
    """Apply ``net.*`` sysctls to the VM when the container shares the VM's network.

    The VM is the pod's network sandbox, so the container has no network namespace of its own
    and crun would refuse them; they belong to the VM's namespace. They leave the spec.
    """
    linux = spec.get("linux")
    if not isinstance(linux, dict):
        return
    if any(ns.get("type") == "network" for ns in linux.get("namespaces") or []):
        return
    sysctls = linux.get("sysctl") or {}
    for key in [k for k in sysctls if k.startswith("net.")]:
        if not SYSCTL_KEY.match(key):
            raise ValueError(f"sysctl: invalid key {key!r}")
        value = str(sysctls.pop(key))
        try:
            Path("/proc/sys", *key.split(".")).write_text(value)
        except FileNotFoundError:
            raise ValueError(f"sysctl {key}: the guest kernel has no such setting") from None
        except OSError as exc:
            raise ValueError(f"sysctl {key}={value}: {exc.strerror}") from None


def hold_root(bundle: Path, root: str) -> str:
    """Give crun the rootfs at ``<bundle>/root/rootfs``, a bind on a mount of its own.

    crun makes the mount that holds the rootfs private before pivot_root; handed the share's
    path, that would be the share itself, in which the container's bind sources live too,
    and their propagation options (slave, shared) would be lost with it."""
    holder = bundle / "root"
    target = holder / "rootfs"
    target.mkdir(parents=True)
    sc.mount(str(holder), str(holder), "", sc.MS_BIND)
    sc.mount(root, str(target), "", sc.MS_BIND | sc.MS_REC)
    return str(target)


def release_root(bundle: Path) -> None:
    for path in (bundle / "root" / "rootfs", bundle / "root"):
        with contextlib.suppress(OSError):
            sc.umount2(str(path), sc.MNT_DETACH)


def image_of(pid: int) -> tuple[int, int] | None:
    """The executable file ``pid`` runs (device, inode), or None once it is gone or a zombie."""
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return None
    return st.st_dev, st.st_ino


async def until_executed(pid: int, before: tuple[int, int] | None) -> None:
    """Return once the container's init no longer runs crun's image: the user program was
    executed (or the init already ended). ``crun start`` only releases the init, which then
    executes the program on its own; the spec's poststart hooks, run when StartContainer
    has answered, come after that."""
    deadline = time.monotonic() + EXEC_WAIT
    delay = 0.002
    while before is not None and image_of(pid) == before:
        if time.monotonic() > deadline:
            log.warning("init %d still runs crun's image %.0f s after start", pid, EXEC_WAIT)
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def spawn_with_io(
    reaper: Reaper, proc: Proc, args: list[str], bundle: Path, terminal: bool, stdin: bool
) -> None:
    """Run a crun create/exec with fresh pipes (or a console socket) wired to ``proc``."""
    log = bundle / "crun.log"
    child_ends: list[int] = []
    console: crun.ConsoleSocket | None = None
    try:
        if terminal:
            # A short path of its own: ids (64 characters from CRI) would break the 108-byte
            # limit of unix socket paths.
            CONSOLES.mkdir(parents=True, exist_ok=True)
            console = crun.ConsoleSocket(CONSOLES / f"{uuid.uuid4().hex[:16]}.sock")
            master_task = asyncio.ensure_future(console.receive_master())
            try:
                await crun.run_crun(reaper, [*args[:1], "--console-socket", str(console.path),
                                             *args[1:]], log)  # fmt: skip
                master = await master_task
            finally:
                master_task.cancel()
            proc.pty_master = master
            proc.stdout = OutputStream(os.dup(master))
            proc.stdin = InputStream(os.dup(master))
        else:
            child_ends = proc.pipes(stdin)
            await crun.run_crun(reaper, args, log, stdio=child_ends)
    except BaseException:
        proc.close()
        raise
    finally:
        for fd in child_ends:
            os.close(fd)
        if console:
            console.close()
