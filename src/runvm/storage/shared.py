"""The per-sandbox shared directory that virtiofsd exports to the guest.

Layout: ``<run_dir>/shared`` is a bind mount of itself with its own shared peer group, so
that bind mounts added under it after virtiofsd started (container rootfs, volumes)
propagate into virtiofsd's mount namespace. Each container gets ``<cid>/rootfs`` (a recursive
bind of the bundle's rootfs) and ``<cid>/mounts/<n>`` for the bind-mount sources of its
config. In the guest the directory appears at ``GUEST_ROOT``.

Contract: every add has a matching removal; :meth:`SharedDir.teardown` detaches whatever is
left and removes the directory, and is idempotent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from runvm.errors import ConfigError
from runvm.storage import mounts

GUEST_ROOT = "/run/runvm/shared"
TAG = "runvm"
#: How the guest mounts the share when it travels over 9p: no guest page cache beyond what
#: mmap needs, so host-side changes are seen at once.
NINEP_OPTIONS = ("trans=virtio", "version=9p2000.L", "msize=262144", "cache=mmap")


class SharedDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def setup(self) -> None:
        # Traversable by any uid: user-namespaced containers reach their rootfs as mapped ids.
        # The run directory above it (0700) keeps other host users out.
        self.path.mkdir()
        self.path.chmod(0o711)
        p = str(self.path)
        mounts.mount(p, p, None, mounts.MS_BIND)
        mounts.mount(None, p, None, mounts.MS_PRIVATE)
        mounts.mount(None, p, None, mounts.MS_SHARED)

    def guest_path(self, host_path: Path) -> str:
        return f"{GUEST_ROOT}/{host_path.relative_to(self.path)}"

    def add_rootfs(self, container_id: str, rootfs: Path, readonly: bool = False) -> Path:
        """Bind ``rootfs`` at ``<cid>/rootfs``; returns the host path of the share."""
        if not rootfs.is_dir():
            raise ConfigError(f"rootfs {rootfs} does not exist or is not a directory")
        target = self.path / container_id / "rootfs"
        target.mkdir(parents=True)
        _bind(rootfs, target, readonly)
        return target

    def add_bind(self, container_id: str, index: int, source: Path, readonly: bool = False) -> Path:
        """Bind a file or directory at ``<cid>/mounts/<index>``; ``readonly`` makes the host
        side of the share read-only, so a guest that remounts it read-write gains nothing."""
        if not source.exists():
            raise ConfigError(f"bind mount source {source} does not exist")
        target = self.path / container_id / "mounts" / str(index)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            target.mkdir()
        else:
            target.touch()
        _bind(source, target, readonly)
        return target

    def remove_container(self, container_id: str) -> None:
        """Detach and remove everything shared for one container."""
        base = self.path / container_id
        if not base.exists():
            return
        for target in sorted(_mounts_under(base), key=len, reverse=True):
            with contextlib.suppress(OSError):
                mounts.umount(target)
        shutil.rmtree(base, ignore_errors=True)

    def teardown(self) -> None:
        if not self.path.exists():
            return
        for target in sorted(_mounts_under(self.path), key=len, reverse=True):
            with contextlib.suppress(OSError):
                mounts.umount(target)
        shutil.rmtree(self.path, ignore_errors=True)


def _bind(source: Path, target: Path, readonly: bool) -> None:
    """A recursive bind; a read-only one is read-only in every namespace it propagates to
    (virtiofsd's included), with its submounts."""
    if readonly:
        mounts.bind_readonly(str(source), str(target))
    else:
        mounts.mount(str(source), str(target), None, mounts.MS_BIND | mounts.MS_REC)


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in set(points) if p == prefix or p.startswith(prefix + os.sep)]
