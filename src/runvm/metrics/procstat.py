"""Host figures of one process from /proc: CPU seconds and proportional set size (PSS).

Contract: every function returns None for a process that is gone, unreadable or whose files
make no sense; nothing raises. Reads are bounded (:data:`MAX_READ`).
"""

from __future__ import annotations

import os

MAX_READ = 64 << 10
TICKS = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, MAX_READ).decode("ascii", errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat_fields(pid: int) -> list[str] | None:
    text = _read(f"/proc/{pid}/stat")
    if text is None or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields if len(fields) > 19 else None


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): tells it from a recycled pid."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None and fields[19].isdigit() else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used."""
    fields = _stat_fields(pid)
    if fields is None or not (fields[11].isdigit() and fields[12].isdigit()):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def pss_bytes(pid: int) -> int | None:
    """The process's proportional set size (``Pss`` of ``smaps_rollup``)."""
    text = _read(f"/proc/{pid}/smaps_rollup")
    for line in (text or "").splitlines():
        if line.startswith("Pss:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) >= 2 and parts[1].isdigit() else None
    return None
