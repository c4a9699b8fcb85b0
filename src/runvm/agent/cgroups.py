"""Reading a container's cgroup v2 figures in the guest (files under /sys/fs/cgroup)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from runvm.protocol import agent_pb2 as pb

MAX_FILE = 65536
MAX_DEPTH = 32  # nested cgroups a container may have made below its own
DRAIN_POLL = 0.005  # seconds between looks at cgroup.events while its processes die


def _read(path: Path) -> str:
    try:
        with path.open() as f:
            return f.read(MAX_FILE)
    except OSError:
        return ""


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _number(text: str) -> int:
    text = text.strip()
    return int(text) if text.isdigit() else 0  # "max" (no limit) and missing files are 0


MAX_DEVICES = 256
MAX_COUNT = 1 << 62  # what the metrics wire takes (runvm.metrics.wire)


def io_totals(text: str) -> dict[str, int]:
    """io.stat (``MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...`` a device a line) summed over
    its devices; at most :data:`MAX_DEVICES` lines, each sum capped at :data:`MAX_COUNT`."""
    totals = {"rbytes": 0, "wbytes": 0, "rios": 0, "wios": 0}
    for line in text.splitlines()[:MAX_DEVICES]:
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key in totals and value.isdigit():
                totals[key] = min(MAX_COUNT, totals[key] + int(value))
    return totals


def stats(cgroup: Path) -> pb.StatsContainerResponse:
    cpu = _keyed(_read(cgroup / "cpu.stat"))
    io = io_totals(_read(cgroup / "io.stat"))
    events = _keyed(_read(cgroup / "cgroup.events"))
    memory_events = _keyed(_read(cgroup / "memory.events"))
    return pb.StatsContainerResponse(
        cpu_usage_usec=cpu.get("usage_usec", 0),
        cpu_user_usec=cpu.get("user_usec", 0),
        cpu_system_usec=cpu.get("system_usec", 0),
        memory_current=_number(_read(cgroup / "memory.current")),
        memory_max=_number(_read(cgroup / "memory.max")),
        pids_current=_number(_read(cgroup / "pids.current")),
        pids_max=_number(_read(cgroup / "pids.max")),
        paused=events.get("frozen", 0) == 1,
        memory_oom_kills=memory_events.get("oom_kill", 0),
        io_read_bytes=io["rbytes"], io_write_bytes=io["wbytes"],
        io_read_ops=io["rios"], io_write_ops=io["wios"],
    )  # fmt: skip


def make(cgroup: Path, top: Path = Path("/sys/fs/cgroup")) -> None:
    """Make ``cgroup`` (below ``top``) with every controller its parents have delegated to it
    (as crun does for a container it creates)."""
    parts = cgroup.relative_to(top).parts
    for depth in range(len(parts)):
        parent = top.joinpath(*parts[:depth])
        for controller in _read(parent / "cgroup.controllers").split():
            with contextlib.suppress(OSError):  # one that cannot be delegated stays off
                (parent / "cgroup.subtree_control").write_text(f"+{controller}")
        (parent / parts[depth]).mkdir(exist_ok=True)


def oom_kills(cgroup: Path) -> int:
    """How many processes the OOM killer took from this cgroup (memory.events oom_kill)."""
    return _keyed(_read(cgroup / "memory.events")).get("oom_kill", 0)


def _populated(cgroup: Path) -> bool:
    return _keyed(_read(cgroup / "cgroup.events")).get("populated", 0) == 1


def _remove_tree(cgroup: Path, depth: int = 0) -> None:
    """rmdir a cgroup and the ones below it, deepest first (OSError if one stays busy)."""
    if depth < MAX_DEPTH:
        with os.scandir(cgroup) as entries:
            children = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
        for child in children:
            _remove_tree(child, depth + 1)
    os.rmdir(cgroup)


async def destroy(cgroup: Path, timeout: float) -> None:
    """Kill every process in ``cgroup`` and below (cgroup.kill), wait until none is left, and
    remove the cgroups; a cgroup that is already gone is not an error. OSError (or
    TimeoutError) when the kernel refuses or processes outlive ``timeout``."""
    if not cgroup.is_dir():
        return
    (cgroup / "cgroup.kill").write_text("1")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _populated(cgroup):
        if loop.time() > deadline:
            raise TimeoutError(f"{cgroup} still has processes {timeout:.0f} s after cgroup.kill")
        await asyncio.sleep(DRAIN_POLL)
    _remove_tree(cgroup)
