"""Files the runtime keeps for itself: created 0600 whatever the umask (they hold state,
logs and guest output, which other local users must not read)."""

from __future__ import annotations

import contextlib
import io
import logging.handlers
import os
from pathlib import Path
from typing import BinaryIO

PRIVATE = 0o600
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


def open_append(path: Path) -> BinaryIO:
    """Open ``path`` for appending, creating it 0600 (an existing file keeps its mode)."""
    return os.fdopen(os.open(path, _APPEND, PRIVATE), "ab")


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (a temporary file renamed over it), 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_dirs(path: Path) -> None:
    """``mkdir -p`` in which every directory made is 0700 (existing ones keep their mode)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)


class RotatingLog(logging.handlers.RotatingFileHandler):
    """A rotating log whose files are created 0600 (the first and every one after a rollover)."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, _APPEND, PRIVATE)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)
