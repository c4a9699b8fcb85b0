"""Onlining the vCPUs the host hot-plugged (the guest kernel adds them offline; a hot-plugged
memory block is onlined by the kernel itself, ``memhp_default_state=online_movable``)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

log = logging.getLogger(__name__)

CPU_ROOT = Path("/sys/devices/system/cpu")
MAX_TIMEOUT = 60.0
POLL = 0.02
_CPU = re.compile(r"cpu(\d{1,4})")


def online_count(root: Path = CPU_ROOT) -> int:
    """CPUs online now, from the kernel's ``online`` list (``0-2,4``)."""
    text = (root / "online").read_text().strip()
    count = 0
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def _offline(root: Path) -> list[Path]:
    found = []
    for entry in root.iterdir():
        match = _CPU.fullmatch(entry.name)
        switch = entry / "online"
        if match and switch.exists() and switch.read_text().strip() == "0":
            found.append((int(match.group(1)), switch))
    return [switch for _, switch in sorted(found)]


def online_some(wanted: int, root: Path = CPU_ROOT) -> int:
    """Bring offline CPUs online, lowest first, until ``wanted`` are; the count online."""
    count = online_count(root)
    for switch in _offline(root):
        if count >= wanted:
            break
        try:
            switch.write_text("1")
            count += 1
        except OSError as exc:  # e.g. being removed at this moment
            log.warning("%s: %s", switch.parent.name, exc)
    return online_count(root)


async def online(wanted: int, timeout: float, root: Path = CPU_ROOT) -> int:
    """:func:`online_some` until ``wanted`` CPUs are online or ``timeout`` passed (hot-plugged
    CPUs appear in sysfs a little after QEMU added them)."""
    deadline = time.monotonic() + min(max(timeout, 0.0), MAX_TIMEOUT)
    while True:
        count = await asyncio.to_thread(online_some, wanted, root)
        if count >= wanted or time.monotonic() >= deadline:
            return count
        await asyncio.sleep(POLL)
