"""Host-side terminals for CLI containers.

``--console-socket``: like runc, connect to the AF_UNIX socket and send one message whose
SCM_RIGHTS carry the pty master, with the name "/dev/ptmx" as data; the monitor keeps the
slave as its controlling terminal, so a resize of the master (TIOCSWINSZ) reaches it as
SIGWINCH and is relayed to the guest tty.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import termios
import tty
from typing import Any

from runvm.errors import ConfigError

_saved: dict[int, list[Any]] = {}


def send_new_pty(socket_path: str) -> int:
    """Make a pty, send its master to ``socket_path``; returns the slave fd."""
    master, slave = os.openpty()
    try:
        # The guest's terminal does the line discipline; this end only carries bytes.
        tty.setraw(slave)
        with contextlib.suppress(OSError):
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(socket_path)
            socket.send_fds(sock, [b"/dev/ptmx"], [master])
    except OSError as exc:
        os.close(slave)
        raise ConfigError(f"console socket {socket_path}: {exc.strerror or exc}") from exc
    finally:
        os.close(master)
    return slave


def make_raw(fd: int) -> None:
    if os.isatty(fd):
        _saved[fd] = termios.tcgetattr(fd)
        tty.setraw(fd)


def restore(fd: int) -> None:
    saved = _saved.pop(fd, None)
    if saved is not None:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
