"""Who owns a group's shim socket, and waiting for a shim that is on its way out.

Contract: a shim server holds an exclusive ``flock`` on its ``<socket>.pid`` file (which
holds its pid) from before it is ready until it exits; the kernel drops the lock when the
process dies, however it dies. A server that is going to exit stops accepting connections
first (before its ``Shutdown`` reply goes out), so a socket that refuses connections while
the pid file is still locked belongs to a shim finishing its teardown: ``start`` and
``delete`` wait for it with :func:`wait_for_owner` before they spawn a new server or clean
up, so that once ``delete`` returns nothing of the pod is left, and no state is removed
under a live shim.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from runvm.errors import RunvmError

CONNECT_TIMEOUT = 2.0
OWNER_WAIT = 20.0  # a clean teardown: the VM stop, then at most 5 s of event flushing
KILL_WAIT = 5.0
POLL = 0.05


def alive(path: Path) -> bool:
    """True if a server accepts connections on the unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created 0600) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def hold_owner(path: Path) -> int:
    """Lock ``path`` for this process's life and write its pid there; returns the fd (close-on-
    exec, so no child inherits the lock). Raises RunvmError if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise RunvmError(f"{path}: another shim still owns this socket") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def wait_for_owner(path: Path, timeout: float = OWNER_WAIT) -> None:
    """Return once no process holds the lock on ``path``. An owner still there after
    ``timeout`` seconds is killed (SIGKILL), then waited for; RunvmError if the lock
    outlives that too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if _wait_unlocked(fd, timeout):
            return
        with contextlib.suppress(ValueError, ProcessLookupError):
            pid = int(os.pread(fd, 32, 0).decode(errors="replace").strip())
            if pid > 1:
                os.kill(pid, signal.SIGKILL)
        if not _wait_unlocked(fd, KILL_WAIT):
            raise RunvmError(f"{path}: the shim that owns it did not exit")
    finally:
        os.close(fd)


def _wait_unlocked(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)
