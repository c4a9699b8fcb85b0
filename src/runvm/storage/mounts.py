"""Host mount(2)/umount2(2) through ctypes (Python 3.11's os module has neither)."""

from __future__ import annotations

import ctypes
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
CLONE_NEWNS = 0x20000


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    rc = _libc.mount(
        source.encode() if source else None, target.encode(),
        fstype.encode() if fstype else None, ctypes.c_ulong(flags),
        data.encode() if data else None,
    )  # fmt: skip
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    if _libc.umount2(target.encode(), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def is_mountpoint(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def fs_type(path: str) -> str:
    """The type of the filesystem ``path`` (which must exist) is on, e.g. ``tmpfs``."""
    target = os.path.realpath(path)
    best, kind = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best) and " - " in line:
                best, kind = point, line.split(" - ", 1)[1].split()[0]
    return kind


def unshare_mounts() -> None:
    """Move this process into a mount namespace of its own, slave to the host's: host mounts
    still appear in it, its own never leak out, and all of them vanish with its last user."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    mount(None, "/", None, MS_SLAVE | MS_REC)


# Mount options that are flags (as mount(8) and containerd's mount package read them).
_FLAGS = {
    "ro": MS_RDONLY, "rw": 0, "bind": MS_BIND, "rbind": MS_BIND | MS_REC, "nosuid": 0x2,
    "nodev": 0x4, "noexec": 0x8, "noatime": 0x400, "relatime": 0x200000,
}  # fmt: skip


def mount_options(options: list[str]) -> tuple[int, str]:
    """(flags, data) for a list of mount options: known flags become bits, the rest data."""
    flags, data = 0, []
    for option in options:
        if option in _FLAGS:
            flags |= _FLAGS[option]
        else:
            data.append(option)
    return flags, ",".join(data)


def mount_spec(kind: str, source: str, target: str, options: list[str]) -> None:
    """Mount one containerd ``Mount`` (overlay, bind, ...) on ``target``; a read-only bind is
    remounted read-only, since the first bind ignores MS_RDONLY."""
    flags, data = mount_options(options)
    if flags & MS_BIND:
        mount(source, target, None, flags & (MS_BIND | MS_REC))
        if flags & ~(MS_BIND | MS_REC):
            mount(None, target, None, flags | MS_REMOUNT)
        return
    mount(source, target, kind, flags, data)


# The new mount API (Linux 5.12+): a detached copy gets its flags before anyone sees it.
# The same numbers on every architecture (system calls added since 5.1 share one table).
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_AT_FDCWD = -100
_OPEN_TREE_CLONE, _AT_RECURSIVE, _AT_EMPTY_PATH = 0x1, 0x8000, 0x1000
_MOVE_MOUNT_F_EMPTY_PATH, _MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
_MOUNT_ATTR_RDONLY = 0x1


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def bind_detached(
    source: str, target: str | int, readonly: bool | None = None, propagation: int = 0
) -> None:
    """Bind ``source`` with its submounts on ``target``, its flags set before it is attached.

    A bind made and then changed (remounted read-only, made a slave) is changed only in this
    mount namespace: copies already propagated to peers (virtiofsd's namespace) keep the old
    flags. Here the copy is made detached (open_tree), set up (mount_setattr), then attached
    (move_mount), so every propagated copy has the flags too. ``readonly``: True makes every
    mount of the tree read-only, False the top one only (runc's ``ro``), None none.
    ``propagation`` (MS_SLAVE, MS_PRIVATE, or 0 to keep the source's) applies to the whole
    tree. ``target`` is a path, or a descriptor of the mount point (O_PATH is enough).
    """
    fd = _check(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, source.encode(),
                              _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_RECURSIVE),
                f"open_tree {source}")  # fmt: skip
    try:
        if propagation:
            _setattr(fd, source, 0, propagation, recursive=True)
        if readonly is not None:
            _setattr(fd, source, _MOUNT_ATTR_RDONLY, 0, recursive=readonly)
        if isinstance(target, int):
            to_fd, to_path, flags = target, b"", _MOVE_MOUNT_T_EMPTY_PATH
        else:
            to_fd, to_path, flags = _AT_FDCWD, target.encode(), 0
        _check(_libc.syscall(_SYS_MOVE_MOUNT, fd, b"", to_fd, to_path,
                             _MOVE_MOUNT_F_EMPTY_PATH | flags), f"move_mount {target}")  # fmt: skip
    finally:
        os.close(fd)


def _setattr(fd: int, source: str, attr_set: int, propagation: int, recursive: bool) -> None:
    attr = struct.pack("QQQQ", attr_set, 0, propagation, 0)  # struct mount_attr
    depth = _AT_RECURSIVE if recursive else 0
    _check(_libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH | depth, attr, len(attr)),
           f"mount_setattr {source}")  # fmt: skip


def has_submounts(path: str) -> bool:
    """True if anything is mounted below ``path`` (its own mount point not counted)."""
    prefix = os.path.realpath(path).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4].startswith(prefix) for line in f)
