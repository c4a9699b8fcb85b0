"""Finding the owners of the sandboxes under a state root, from what they keep on disk.

- the CLI path: ``<state_root>/sandboxes/<name>/monitor.sock``, the monitor's control
  socket in its sandbox's run directory (a directory without one is not a monitor's: the
  cache daemon's ready VMs, a sandbox being torn down);
- the shim path: ``<state_root>/k/<namespace>/<pod>.json``, the record a shim keeps for each
  pod it serves, naming its socket (one shim may serve several pods: asked once).

Contract: :func:`owners` never raises for what it finds (a file too big, not JSON, of the
wrong shape or naming a socket outside the state root is skipped and counted in
``bad``); it looks at no more than :data:`MAX_OWNERS` sandboxes and reads no file past
:data:`MAX_RECORD` bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

MAX_OWNERS = 4096
MAX_RECORD = 64 << 10


@dataclass(frozen=True)
class Owner:
    """A process that owns VMs, and how to ask it."""

    socket: Path
    kind: str  # monitor | shim
    names: tuple[str, ...]  # its sandboxes' directory names (labels until it answers)
    pids: tuple[tuple[str, int], ...] = ()  # (role, pid) known from disk


@dataclass
class Found:
    owners: list[Owner] = field(default_factory=list)
    bad: int = 0  # state files that could not be used


def owners(state_root: Path) -> Found:
    """See the module docstring."""
    found = Found()
    _monitors(state_root, found)
    _shims(state_root, found)
    return found


def locate(state_root: Path, name: str) -> Owner | None:
    """The owner of the sandbox ``name`` names: a CLI container's monitor, or the shim whose
    record names it as its pod or one of its containers; None if nothing here does."""
    from runvm.names import run_dir_name

    short = run_dir_name(name)
    sock = state_root / "sandboxes" / short / "monitor.sock"
    if sock.is_socket():
        return Owner(sock, "monitor", (short,))
    found = _pod_record(state_root, name)
    if found is None:
        return None
    path, record = found
    return Owner(Path(str(record["socket"])), "shim", (path.stem,))


def pod_record(state_root: Path, name: str) -> tuple[Path, Path] | None:
    """The record of the containerd pod ``name`` names (its id or one of its containers')
    and the pod's run directory; None if no shim here keeps one."""
    found = _pod_record(state_root, name)
    if found is None:
        return None
    path, record = found
    run_dir = record.get("run_dir")
    if not isinstance(run_dir, str) or not Path(run_dir).is_relative_to(state_root):
        return None
    return path, Path(run_dir)


def _pod_record(state_root: Path, name: str) -> tuple[Path, dict[str, object]] | None:
    from runvm.names import run_dir_name

    short = run_dir_name(name)
    sockets_dir = (state_root / "s").resolve()
    for namespace in _entries(state_root / "k"):
        for entry in _entries(Path(namespace.path)):
            if not entry.name.endswith(".json"):
                continue
            record = _read_record(Path(entry.path))
            if record is None:
                continue
            raw, tasks = record.get("socket"), record.get("tasks")
            mine = entry.name == f"{short}.json" or (isinstance(tasks, list) and name in tasks)
            if mine and isinstance(raw, str) and Path(raw).parent.resolve() == sockets_dir:
                return Path(entry.path), record
    return None


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            out = []
            for entry in it:
                out.append(entry)
                if len(out) >= MAX_OWNERS:
                    break
            return sorted(out, key=lambda e: e.name)
    except OSError:
        return []


def _monitors(state_root: Path, found: Found) -> None:
    for entry in _entries(state_root / "sandboxes"):
        sock = Path(entry.path) / "monitor.sock"
        if len(found.owners) >= MAX_OWNERS:
            return
        try:
            if not entry.is_dir(follow_symlinks=False) or not sock.is_socket():
                continue
        except OSError:
            continue
        found.owners.append(Owner(sock, "monitor", (entry.name,)))


def _read_record(path: Path) -> dict[str, object] | None:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_RECORD + 1)
    except OSError:
        return None
    if len(data) > MAX_RECORD:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _pid(value: object) -> int:
    return value if isinstance(value, int) and 1 < value < 1 << 22 else 0


def _shims(state_root: Path, found: Found) -> None:
    by_socket: dict[Path, Owner] = {}
    sockets_dir = (state_root / "s").resolve()
    for namespace in _entries(state_root / "k"):
        for entry in _entries(Path(namespace.path)):
            if not entry.name.endswith(".json") or len(found.owners) >= MAX_OWNERS:
                continue
            record = _read_record(Path(entry.path))
            raw = record.get("socket") if record is not None else None
            sock = Path(raw) if isinstance(raw, str) and raw.startswith("/") else None
            if record is None or sock is None or sock.parent.resolve() != sockets_dir:
                found.bad += 1  # (a socket elsewhere is not this state root's to ask)
                continue
            name = entry.name.removesuffix(".json")
            pids = tuple((role, pid) for role, key in (("shim", "shim_pid"), ("qemu", "vm_pid"))
                         if (pid := _pid(record.get(key))))  # fmt: skip
            have = by_socket.get(sock)
            if have is None:
                owner = Owner(sock, "shim", (name,), pids)
                found.owners.append(owner)
            else:  # one shim for several pods of the namespace
                owner = Owner(sock, "shim", (*have.names, name), have.pids)
                found.owners[found.owners.index(have)] = owner
            by_socket[sock] = owner
