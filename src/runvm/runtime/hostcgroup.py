"""Placing a pod's host processes (shim, QEMU, virtiofsd) in the host cgroup its config names.

Contract: :func:`cgroup_dirs` turns an OCI ``cgroupsPath`` (a path, or systemd's
``slice:prefix:name``) into the directories of that cgroup in every mounted hierarchy (one
under cgroup v2, one per controller under v1). :meth:`HostCgroup.create` makes the missing
ones (remembering which) and :meth:`HostCgroup.enter` moves a process in;
:meth:`HostCgroup.leave` moves this process back where it was and :meth:`HostCgroup.remove`
removes the directories it made, deepest first, once they are empty (a few retries while
exiting processes leave). A cgroup is accounting, not isolation: failures to place are
logged by the caller, never fatal.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from runvm.errors import ConfigError

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 60  # v1 says "no limit" with a number near 2**63 ("max" under v2)
# v1 controllers we place processes in (cpuset needs its cpus/mems copied first).
V1_CONTROLLERS = ("cpu,cpuacct", "cpu", "cpuacct", "memory", "pids", "blkio", "devices",
                  "freezer", "cpuset", "systemd")  # fmt: skip


def systemd_path(value: str) -> str:
    """``kubepods-besteffort.slice:cri-containerd:ID`` -> the path systemd would use:
    ``/kubepods.slice/kubepods-besteffort.slice/cri-containerd-ID.scope``."""
    parts = value.split(":")
    if len(parts) != 3:
        raise ConfigError(f"cgroupsPath {value!r}: expected slice:prefix:name")
    slice_name, prefix, name = parts
    slice_name = slice_name or "system.slice"
    if not slice_name.endswith(".slice"):
        raise ConfigError(f"cgroupsPath {value!r}: {slice_name!r} is not a .slice")
    path = ""
    if slice_name != "-.slice":
        stem = slice_name.removesuffix(".slice")
        words = stem.split("-")
        path = "".join(f"/{'-'.join(words[: i + 1])}.slice" for i in range(len(words)))
    unit = f"{prefix}-{name}.scope" if prefix else name
    return f"{path}/{unit}"


def normalize(cgroups_path: str) -> str:
    """An absolute cgroup path without '..' for ``cgroupsPath``."""
    path = systemd_path(cgroups_path) if ":" in cgroups_path else cgroups_path
    path = "/" + path.strip("/")
    if ".." in path.split("/"):
        raise ConfigError(f"cgroupsPath {cgroups_path!r} must not contain '..'")
    return path


def hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    """The hierarchy mount points: the root itself under v2, else the v1 controllers."""
    if (root / "cgroup.controllers").exists():
        return [root]
    return [root / name for name in V1_CONTROLLERS if (root / name).is_dir()
            and not (root / name).is_symlink()]  # fmt: skip


def cgroup_dirs(cgroups_path: str, root: Path = CGROUP_ROOT) -> list[Path]:
    rel = normalize(cgroups_path).lstrip("/")
    return [h / rel for h in hierarchies(root)]


@dataclass
class HostCgroup:
    dirs: list[Path]
    created: list[Path] = field(default_factory=list)
    origin: dict[Path, Path] = field(default_factory=dict)  # hierarchy dir -> where we came from
    root: Path = CGROUP_ROOT

    @classmethod
    def create(cls, cgroups_path: str, root: Path = CGROUP_ROOT) -> HostCgroup:
        group = cls(cgroup_dirs(cgroups_path, root), root=root)
        try:
            for path in group.dirs:
                group._make(path)
        except OSError:
            group.remove()
            raise
        return group

    def _make(self, path: Path) -> None:
        missing = []
        probe = path
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for directory in reversed(missing):
            directory.mkdir()
            self.created.append(directory)
            for name in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset: empty ones refuse tasks
                mine, parents = directory / name, directory.parent / name
                if mine.exists() and not mine.read_text().strip():
                    mine.write_text(parents.read_text())

    def enter(self, pid: int = 0) -> None:
        """Move ``pid`` (0: this process) into every hierarchy's directory."""
        for path in self.dirs:
            if pid == 0:
                self.origin[path] = _current(path)
            (path / "cgroup.procs").write_text(str(pid or os.getpid()))

    def memory_limit(self) -> int | None:
        """The tightest memory limit (bytes) on this cgroup or any cgroup above it, in any
        hierarchy (v2 ``memory.max``, v1 ``memory.limit_in_bytes``); None if unlimited."""
        limits = []
        for path in self.dirs:
            for directory in [path, *path.parents]:
                if directory == self.root or self.root not in directory.parents:
                    break
                for name in ("memory.max", "memory.limit_in_bytes"):
                    with contextlib.suppress(OSError, ValueError):
                        value = int((directory / name).read_text().strip())
                        if value < UNLIMITED:
                            limits.append(value)
        return min(limits, default=None)

    def leave(self) -> None:
        for origin in self.origin.values():
            with contextlib.suppress(OSError):
                (origin / "cgroup.procs").write_text(str(os.getpid()))
        self.origin.clear()

    def remove(self, attempts: int = 20) -> None:
        for directory in sorted(self.created, key=lambda p: len(p.parts), reverse=True):
            for _ in range(attempts):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        self.created = [d for d in self.created if d.exists()]


def _current(hierarchy_dir: Path) -> Path:
    """This process's cgroup directory in the hierarchy that ``hierarchy_dir`` lives in."""
    mount = next(p for p in [hierarchy_dir, *hierarchy_dir.parents] if p.parent == CGROUP_ROOT
                 or p == CGROUP_ROOT)  # fmt: skip
    name = mount.name
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        if (
            (mount == CGROUP_ROOT and controllers == "")
            or name in (controllers, controllers.removeprefix("name="))
            or set(name.split(",")) == set(controllers.split(","))
        ):
            return mount / rel.lstrip("/")
    return mount


def join_mine(pid: int, root: Path = CGROUP_ROOT) -> list[str]:
    """Move ``pid`` into this process's cgroup in every hierarchy (a VM handed over by the
    cache was started in the daemon's); returns the failures, for the caller to log."""
    failures = []
    for hierarchy in hierarchies(root):
        try:
            (_current(hierarchy) / "cgroup.procs").write_text(str(pid))
        except (OSError, StopIteration) as exc:
            failures.append(f"{hierarchy}: {exc}")
    return failures
