"""Running crun inside the guest.

The agent creates containers by running crun (a small C OCI runtime shipped in the guest
image) rather than re-implementing namespaces, mounts, capabilities and seccomp through
ctypes: it is complete, fast to start (no new Python), and its state stays inside the VM.
crun is started with ``posix_spawn`` and reaped by the agent's reaper like every child.

Contract of :func:`run_crun`: runs ``crun <global flags> ARGS`` with the given stdio fds,
waits for it, and raises :class:`CrunError` carrying crun's own error message on a non-zero
exit. Containers and execs started with ``create``/``exec --detach`` are re-parented to the
agent (PID 1) when crun exits, so their exit statuses arrive at the reaper.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

from runvm.agent.reaper import Reaper

log = logging.getLogger("runvm.agent")

CRUN = "/usr/bin/crun"
CRUN_ROOT = "/run/crun"
MAX_LOG = 64 * 1024
#: The seals crun requires of /proc/self/exe to trust it as its own sealed copy.
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
#: What :func:`run_crun` executes: crun's sealed copy once :func:`seal` made it.
_executable = CRUN


class CrunError(Exception):
    """crun exited non-zero; the message is crun's own error text."""


_NOT_IN_PATH = re.compile(r"executable file `(.*)` not found in \$PATH: (.*)")
_NOT_OPENED = re.compile(r"open executable: (.*)")
_START = "unable to start container process: exec: "


def explain(message: str, executable: str) -> str:
    """crun's complaint about the program it was to run, worded as runc words it: clients
    pick their exit codes from runc's words (Docker and Podman: 127 for a program not
    found, 126 for one that cannot be executed). Other messages are returned as they are."""
    if found := _NOT_IN_PATH.search(message):
        path, why = found.groups()
        if "/" not in path:
            return f'{_START}"{path}": executable file not found in $PATH'
        return f'{_START}"{path}": stat {path}: {why.lower()}'
    if found := _NOT_OPENED.search(message):
        return f'{_START}"{executable}": {found.group(1).lower()}'
    return message


def tail_lines(log: Path) -> list[str]:
    """The lines of the last :data:`MAX_LOG` bytes of a log ([] if it cannot be read)."""
    try:
        with log.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - MAX_LOG))
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def _log_message(log: Path) -> str:
    messages = []
    for line in tail_lines(log):
        try:
            entry = json.loads(line)
            messages.append(str(entry.get("msg", line)))
        except (ValueError, AttributeError):
            messages.append(line)
    return "; ".join(m for m in messages[-3:] if m)


async def run_crun(
    reaper: Reaper, args: Sequence[str], log: Path, stdio: Sequence[int] | None = None
) -> None:
    """Run crun to completion; see the module docstring."""
    argv = [CRUN, "--root", CRUN_ROOT, "--log", f"file:{log}", "--log-format", "json", *args]
    fds = dict(enumerate(stdio)) if stdio else None
    status = await reaper.run(argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, fds, _executable)
    if status != 0:
        message = _log_message(log) or f"crun {args[0]} exited {status}"
        raise CrunError(message)


def seal(path: str = CRUN) -> bool:
    """Make a sealed in-memory copy of crun (once, at boot) that :func:`run_crun` executes.

    crun guards against a container overwriting the runtime through /proc/self/exe by
    re-executing itself from a read-only or sealed copy unless /proc/self/exe already is a
    fully sealed memfd; from a file it does so once or twice per call, each a whole process
    start with its dynamic linking (about 100 ms each under emulation). A sealed memfd
    cannot be written by anyone, so a crun started from it runs once, equally guarded. The
    copy is executed through this process's /proc/self/fd link (close-on-exec: no child
    inherits it). Returns False, logged, if the copy could not be made: crun then runs from
    ``path``, slower.
    """
    global _executable
    try:
        fd = os.memfd_create("crun", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            with open(path, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                copied = 0
                while copied < size:
                    sent = os.sendfile(fd, src.fileno(), copied, size - copied)
                    if sent == 0:
                        raise OSError(f"{path} shrank while it was copied")
                    copied += sent
            os.fchmod(fd, 0o755)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        except OSError:
            os.close(fd)
            raise
    except OSError as exc:
        log.warning("crun runs from %s, not a sealed copy: %s", path, exc)
        return False
    _executable = f"/proc/self/fd/{fd}"  # resolved by each spawned child, in its fd table
    return True


def forget(container_id: str) -> None:
    """Remove crun's state of a container whose processes and cgroup are gone: what
    ``crun delete`` does last, without a crun process."""
    shutil.rmtree(Path(CRUN_ROOT) / container_id, ignore_errors=True)


def release(container_id: str) -> None:
    """Start a created container as ``crun start`` does when it has no poststart hooks: open
    the ``exec.fifo`` its init waits on, remove it (crun's mark of a created container) and
    write one byte, which lets the init execute the program. OSError if the init is gone."""
    fifo = Path(CRUN_ROOT) / container_id / "exec.fifo"
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # ENXIO: no init reads it
    try:
        os.unlink(fifo)
        os.write(fd, b"\0")
    finally:
        os.close(fd)


class ConsoleSocket:
    """A listening unix socket for crun's ``--console-socket``: receives the pty master."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.sock.setblocking(False)

    async def receive_master(self, timeout: float = 30.0) -> int:
        """The pty master fd crun sends (SCM_RIGHTS); the socket is closed afterwards."""
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await asyncio.wait_for(loop.sock_accept(self.sock), timeout)
            with conn:
                conn.setblocking(True)
                conn.settimeout(timeout)
                fds = array.array("i")
                _, ancdata, _, _ = conn.recvmsg(1024, socket.CMSG_SPACE(fds.itemsize))
                for level, kind, data in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                if not fds:
                    raise CrunError("crun sent no terminal on the console socket")
                for extra in fds[1:]:
                    os.close(extra)
                return fds[0]
        finally:
            self.close()

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
