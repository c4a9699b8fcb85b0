"""Onlining the vCPUs the host hot-plugged (the guest kernel adds them offline; a hot-plugged
memory block is onlined by the kernel itself, ``memhp_default_state=online_movable``), and
offlining the ones a host that cannot unplug them takes back (runvm.hypervisor.qemu.resize)."""

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


def _switches(root: Path, state: str) -> list[Path]:
    """The ``online`` switches of CPUs in ``state`` ("0" or "1"), lowest CPU first (cpu0 has
    none: it cannot go offline)."""
    found = []
    for entry in root.iterdir():
        match = _CPU.fullmatch(entry.name)
        switch = entry / "online"
        if match and switch.exists() and switch.read_text().strip() == state:
            found.append((int(match.group(1)), switch))
    return [switch for _, switch in sorted(found)]


def online_some(wanted: int, root: Path = CPU_ROOT) -> int:
    """Bring CPUs online (lowest first) or offline (highest first) until ``wanted`` are
    online, as far as there are; the count online."""
    count = online_count(root)
    if count < wanted:
        flips, value = _switches(root, "0")[: wanted - count], "1"
    else:
        flips, value = _switches(root, "1")[::-1][: count - wanted], "0"
    for switch in flips:
        try:
            switch.write_text(value)
        except OSError as exc:  # e.g. being removed at this moment
            log.warning("%s: %s", switch.parent.name, exc)
    return online_count(root)


async def online(wanted: int, timeout: float, root: Path = CPU_ROOT) -> int:
    """:func:`online_some` until exactly ``wanted`` CPUs are online or ``timeout`` passed
    (hot-plugged CPUs appear in sysfs a little after QEMU added them)."""
    deadline = time.monotonic() + min(max(timeout, 0.0), MAX_TIMEOUT)
    while True:
        count = online_some(wanted, root)  # (sysfs writes: quick; the image has no threads)
        if count == wanted or time.monotonic() >= deadline:
            return count
        await asyncio.sleep(POLL)
