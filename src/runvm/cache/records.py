"""The cache daemon's records of its VMs, so that a restarted daemon finds what it left.

One JSON file per VM in ``<state_root>/cache/``: ``{"vm": ID, "dir": PATH, "peer": null}``
while the VM waits in the pool (written before its QEMU starts), and with ``"peer": [pid,
start time]`` (the sandbox process that took it) once handed over. QEMU is found by its
``-name runvm-ID,`` argument, so a record is never wrong about which process it means.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runvm import files
from runvm.process import start_time


def records_dir(state_root: str) -> Path:
    return Path(state_root) / "cache"


def write(directory: Path, vm_id: str, run_dir: Path, peer: tuple[int, int] | None) -> None:
    record = {"vm": vm_id, "dir": str(run_dir), "peer": list(peer) if peer else None}
    files.make_dirs(directory)
    files.write_atomic(directory / f"{vm_id}.json", json.dumps(record).encode())


def remove(directory: Path, vm_id: str) -> None:
    (directory / f"{vm_id}.json").unlink(missing_ok=True)


def read_all(directory: Path) -> list[dict[str, Any]]:
    """Every well-formed record (others are removed)."""
    out = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("vm"), str)
                and isinstance(record.get("dir"), str)):  # fmt: skip
            path.unlink(missing_ok=True)
            continue
        out.append(record)
    return out


def alive(identity: object) -> bool:
    """Whether ``[pid, start time]`` still names a running process."""
    if not (isinstance(identity, list) and len(identity) == 2):
        return False
    pid, started = identity
    return isinstance(pid, int) and pid > 0 and start_time(pid) == started


def qemu_of(vm_id: str) -> int | None:
    """The pid of the QEMU started for ``vm_id``, if it runs."""
    needle = f"runvm-{vm_id},".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.startswith(needle) for arg in argv):  # -name runvm-ID,debug-threads=on
            return int(entry)
    return None
