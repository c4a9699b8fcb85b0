"""Files the runtime keeps for itself: created 0600 whatever the umask (they hold state,
logs and guest output, which other local users must not read).

A sandbox's logs have every line start with the time it was written, so that ``runvm logs``
can interleave them: ``<UTC time, RFC 3339 with microseconds> <text>``, e.g.
``2026-12-06T22:53:36.346620Z runvm-agent: INFO ...`` (QEMU's ``-msg timestamp=on`` writes
its lines the same way). :class:`StampedLog` turns a byte stream (a guest console, a
helper's output) into such lines, rotating at a cap (one older file kept);
:class:`StampedHandler` does the same for this process's logging records; :func:`split` and
:func:`unstamp` read them back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging.handlers
import os
import re
import time
from datetime import UTC, datetime
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


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's contents, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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


LINE_MAX = 16 << 10  # a longer line is cut: the rest starts a new one
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) ")


def stamp(when: float | None = None) -> str:
    """``when`` (seconds since the epoch; now if None) as a line's time."""
    moment = datetime.fromtimestamp(time.time() if when is None else when, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def split(line: str) -> tuple[str, str]:
    """(the line's time, its text); the time is "" for a line without one."""
    found = _STAMP.match(line)
    return (found.group(1), line[found.end() :]) if found else ("", line)


def unstamp(text: str) -> str:
    """``text`` with the time taken off the start of every line."""
    return "".join(split(line)[1] for line in text.splitlines(keepends=True))


def rotated(path: Path) -> Path:
    """Where ``path``'s previous file goes when it reaches its cap."""
    return path.with_name(path.name + ".1")


class StampedLog:
    """Lines of a byte stream into ``path``, each stamped with the time its first byte came;
    at ``cap`` bytes the file becomes ``<path>.1`` (replacing the older one)."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self._file = open_append(path)
        self._size = self._file.tell()
        self._partial = b""
        self._since = ""

    def write(self, data: bytes) -> None:
        out = []
        while data:
            if not self._partial:
                self._since = stamp()
            room = LINE_MAX - len(self._partial)
            line, newline, rest = data.partition(b"\n")
            if len(line) > room or (len(line) == room and not newline):  # cut: the rest
                self._partial += line[:room]  # starts a line of its own
                data = line[room:] + newline + rest
                out.append(self._line())
                continue
            self._partial += line
            data = rest
            if newline:
                out.append(self._line())
        self._emit(b"".join(out))

    def _line(self) -> bytes:
        line = f"{self._since} ".encode() + self._partial + b"\n"
        self._partial = b""
        return line

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if self._size + len(data) > self.cap:
            self._file.close()
            os.replace(self.path, rotated(self.path))
            self._file = open_append(self.path)
            self._size = 0
            data = data[-self.cap :]
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def close(self) -> None:
        """Write a last line left without its newline, and close."""
        if self._partial:
            self._emit(self._line())
        self._file.close()


class StampedFormatter(logging.Formatter):
    """``<time> <prefix><LEVEL> <logger>: <message>``, the time as :func:`stamp` writes it."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__(f"{prefix}%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", "\n    ")  # a record stays one entry
        return f"{stamp(record.created)} {text}"


class StampedHandler(logging.Handler):
    """Records into ``path`` (rotated at ``cap`` bytes) once its directory exists: a
    record logged before is kept (at most :data:`EARLY` of them) and written then."""

    EARLY = 256

    def __init__(self, path: Path, cap: int = 1 << 20, prefix: str = "") -> None:
        super().__init__()
        self.path = path
        self.cap = cap
        self.setFormatter(StampedFormatter(prefix))
        self._log: StampedLog | None = None
        self._early: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if self._log is None and self.path.parent.is_dir():
                self._log = StampedLog(self.path, self.cap)
                for early in self._early:
                    self._log._emit(early.encode(errors="replace") + b"\n")
                self._early.clear()
            if self._log is not None:
                self._log._emit(line.encode(errors="replace") + b"\n")
            elif len(self._early) < self.EARLY:
                self._early.append(line)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        super().close()
