"""Thin ctypes wrappers for the Linux calls Python 3.11's os module lacks.

Each raises OSError (with errno and the call's name) on failure, like os functions do.
"""

from __future__ import annotations

import ctypes
import os
import platform

libc = ctypes.CDLL(None, use_errno=True)

SYS_FINIT_MODULE = {"x86_64": 313, "aarch64": 273}

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 0x2

LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
LINUX_REBOOT_CMD_RESTART = 0x01234567


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    _check(
        libc.mount(
            source.encode(), target.encode(), fstype.encode() if fstype else None,
            ctypes.c_ulong(flags), data.encode() if data else None,
        ),
        f"mount {target}",
    )  # fmt: skip


def umount2(target: str, flags: int = 0) -> None:
    _check(libc.umount2(target.encode(), flags), f"umount {target}")


def finit_module(path: str, params: str = "") -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        number = SYS_FINIT_MODULE[platform.machine()]
        _check(libc.syscall(number, fd, params.encode(), 0), f"finit_module {path}")
    finally:
        os.close(fd)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(libc.sethostname(raw, len(raw)), "sethostname")


def reboot(cmd: int) -> None:
    _check(libc.reboot(ctypes.c_int(cmd)), "reboot")
