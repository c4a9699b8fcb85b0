"""The KSM throttling schedule and its sysfs writes (pure but for the files it is given).

A kick (a new sandbox) sets KSM to *aggressive*; without further kicks it steps down to
*standard* after 30 s, *slow* after 120 s more, and after 120 s more the original sysfs
values are restored. Each level scans AnonPages / page size / factor pages per wake-up:
aggressive factor 10 every 1 ms, standard 100 every 10 ms, slow 500 every 100 ms. A setting
is written as run=0, pages_to_scan, sleep_millisecs, run=1. Without KSM (no ``run`` file, or
not writable) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SYSFS = Path("/sys/kernel/mm/ksm")
MEMINFO = Path("/proc/meminfo")
TUNABLES = ("run", "pages_to_scan", "sleep_millisecs")


@dataclass(frozen=True)
class Level:
    name: str
    factor: int
    sleep_ms: int
    lasts: float  # seconds without a kick before the next level


LEVELS = (
    Level("aggressive", 10, 1, 30.0),
    Level("standard", 100, 10, 120.0),
    Level("slow", 500, 100, 120.0),
)


class Throttler:
    def __init__(
        self,
        sysfs: Path = SYSFS,
        meminfo: Path = MEMINFO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sysfs = sysfs
        self.meminfo = meminfo
        self.clock = clock
        self.original: dict[str, str] = {}
        self.level: int | None = None  # index into LEVELS; None: KSM as we found it
        self.deadline = 0.0
        self.available = (sysfs / "run").is_file() and os.access(sysfs / "run", os.W_OK)
        if self.available:
            self.original = {name: (sysfs / name).read_text().strip() for name in TUNABLES}

    def _anon_pages(self) -> int:
        for line in self.meminfo.read_text().splitlines():
            if line.startswith("AnonPages:"):
                return int(line.split()[1]) * 1024 // os.sysconf("SC_PAGE_SIZE")
        return 0

    def _write(self, values: dict[str, str]) -> None:
        for name in ("run", "pages_to_scan", "sleep_millisecs"):
            if name in values:
                (self.sysfs / name).write_text(values[name] + "\n")

    def _apply(self, index: int) -> None:
        level = LEVELS[index]
        pages = max(1, self._anon_pages() // level.factor)
        (self.sysfs / "run").write_text("0\n")
        self._write({"pages_to_scan": str(pages), "sleep_millisecs": str(level.sleep_ms)})
        (self.sysfs / "run").write_text("1\n")
        self.level = index
        self.deadline = self.clock() + level.lasts
        log.info("ksm: %s (%d pages every %d ms)", level.name, pages, level.sleep_ms)

    def kick(self) -> None:
        """A sandbox started: merge aggressively from now."""
        if self.available:
            self._apply(0)

    def tick(self) -> float | None:
        """Step down if the current level's time is up; returns when to call again (None:
        nothing is pending)."""
        if self.level is None:
            return None
        if self.clock() >= self.deadline:
            if self.level + 1 < len(LEVELS):
                self._apply(self.level + 1)
            else:
                self.restore()
                return None
        return self.deadline

    def restore(self) -> None:
        """Put back the values found at start (also on exit)."""
        if self.available and self.level is not None:
            self._write({k: self.original[k] for k in ("pages_to_scan", "sleep_millisecs")})
            self._write({"run": self.original["run"]})
            log.info("ksm: restored run=%s", self.original["run"])
        self.level = None
