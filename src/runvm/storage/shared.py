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
import enum
import errno
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


PRIVATE_OPTIONS = ("private", "rprivate", "unbindable", "runbindable")


class ReadOnly(enum.Enum):
    """How a bind share is read-only on the host: runc's ``ro`` (the top mount; submounts
    keep their own flags) or ``rro`` (recursively)."""

    NO = "rw"
    TOP = "ro"
    ALL = "rro"

    @classmethod
    def of(cls, options: list[str]) -> ReadOnly:
        """The mode a mount's options ask for."""
        return cls.ALL if "rro" in options else cls.TOP if "ro" in options else cls.NO

    def __bool__(self) -> bool:
        return self is not ReadOnly.NO


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
        with contextlib.ExitStack() as fds:
            base = _mkdir_at(fds, _open_dir(fds, str(self.path)), container_id, exist_ok=True)
            leaf = _mkdir_at(fds, base, "rootfs", exist_ok=False)
            _bind(rootfs, leaf, readonly)
        return self.path / container_id / "rootfs"

    def add_bind(
        self,
        container_id: str,
        index: int | str,
        source: Path,
        readonly: ReadOnly = ReadOnly.NO,
        private: bool = False,
    ) -> Path:
        """Bind a file or directory at ``<cid>/mounts/<index>`` (a name for what is not one of
        the container's mounts: a checkpoint's directories); ``readonly`` makes the host
        side of the share read-only (the top mount, or with its submounts), so a guest that
        remounts it read-write gains nothing. The share is a slave of the source's mounts
        (host mounts made under a shared source later reach the guest, as runc's binds
        under its ``rslave`` root do), or ``private`` (a bind's private options)."""
        if not source.exists():
            raise ConfigError(f"bind mount source {source} does not exist")
        with contextlib.ExitStack() as fds:
            base = _mkdir_at(fds, _open_dir(fds, str(self.path)), container_id, exist_ok=True)
            parent = _mkdir_at(fds, base, "mounts", exist_ok=True)
            if source.is_dir():
                leaf = _mkdir_at(fds, parent, str(index), exist_ok=False)
            else:
                leaf = _create_at(fds, parent, str(index))
            mode = None if not readonly else readonly is ReadOnly.ALL
            propagation = mounts.MS_PRIVATE if private else mounts.MS_SLAVE
            mounts.bind_detached(str(source), leaf, mode, propagation)
        return self.path / container_id / "mounts" / str(index)

    def remove_bind(self, container_id: str, index: int | str) -> None:
        """Detach and remove what :meth:`add_bind` put at ``<cid>/mounts/<index>``."""
        leaf = self.path / container_id / "mounts" / str(index)
        for target in sorted(_mounts_under(leaf), key=len, reverse=True):
            with contextlib.suppress(OSError):
                mounts.umount(target)
        with contextlib.suppress(OSError):
            leaf.rmdir() if leaf.is_dir() and not leaf.is_symlink() else leaf.unlink()

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


# The guest writes into this tree (through virtio-fs or 9p) and may plant symlinks or swap
# directories at any moment: every step below works on file descriptors opened with
# O_NOFOLLOW, and mounts go onto those descriptors, so nothing the host creates or mounts can
# be redirected outside the shared directory.
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(fds: contextlib.ExitStack, name: str, parent: int | None = None) -> int:
    try:
        fd = os.open(name, _DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise ConfigError(
            f"shared directory: {name} is not a directory (replaced from inside the guest?)"
        ) from None
    fds.callback(os.close, fd)
    return fd


def _mkdir_at(fds: contextlib.ExitStack, parent: int, name: str, exist_ok: bool) -> int:
    """Make directory ``name`` in ``parent`` and return an O_PATH descriptor of it."""
    try:
        os.mkdir(name, 0o755, dir_fd=parent)
    except FileExistsError:
        if not exist_ok:
            raise ConfigError(f"shared directory: {name} already exists") from None
    return _open_dir(fds, name, parent)


def _create_at(fds: contextlib.ExitStack, parent: int, name: str) -> int:
    """Create empty file ``name`` in ``parent`` (it must not exist); return its descriptor."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o644, dir_fd=parent)
    except FileExistsError:
        raise ConfigError(f"shared directory: {name} already exists") from None
    fds.callback(os.close, fd)
    return fd


def _bind(source: Path, target: int, readonly: bool) -> None:
    """A recursive bind onto the descriptor ``target``; a read-only one is read-only in every
    namespace it propagates to (virtiofsd's included), with its submounts."""
    if readonly:
        mounts.bind_detached(str(source), target, readonly=True)
    else:  # mount(2) follows /proc/self/fd/N to the very inode the descriptor holds
        mounts.mount(str(source), f"/proc/self/fd/{target}", None, mounts.MS_BIND | mounts.MS_REC)


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in set(points) if p == prefix or p.startswith(prefix + os.sep)]
