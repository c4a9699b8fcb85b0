"""Start-up trace for the benchmarks (``bench/start.py --ctr --phases``).

With ``RUNVM_TRACE`` naming a file in the environment, :func:`mark` appends one line,
``<CLOCK_MONOTONIC seconds> <pid> <event>``, with a single ``O_APPEND`` write (so lines from
several processes never interleave); without it, :func:`mark` does nothing. CLOCK_MONOTONIC
is one clock for every process of the host, so a reader lines the marks up with its own.
A trace that cannot be written is skipped: tracing never fails a start.
"""

from __future__ import annotations

import os
import time

_PATH = os.environ.get("RUNVM_TRACE", "")


def enabled() -> bool:
    return bool(_PATH)


def mark(event: str, at: float | None = None) -> None:
    """Record ``event`` now (or at monotonic time ``at``)."""
    if not _PATH:
        return
    line = f"{time.monotonic() if at is None else at:.6f} {os.getpid()} {event}\n"
    try:
        fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode(errors="replace"))
        finally:
            os.close(fd)
    except OSError:
        pass


def process_started() -> float:
    """When this process was exec'd, on the monotonic clock (10 ms resolution): its start
    time in /proc counts clock ticks since boot, which is CLOCK_BOOTTIME."""
    try:
        stat = open("/proc/self/stat", encoding="ascii").read()  # noqa: SIM115
        ticks = int(stat.rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return time.monotonic()
    since = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.monotonic() - since
