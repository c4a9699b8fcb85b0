"""Filesystems the agent mounts for the host: the shared directory, tmpfs, block devices.

Every mount point must lie under ``/run/runvm/``; an unknown driver is refused. A ``blk``
storage names a hot-plugged virtio-blk disk by its serial: the agent waits for the disk to
appear (the hot-plug is asynchronous) and mounts it. A hot-plugged virtio-fs share's tag is
unknown until the guest has probed its device (PCIe native hot-plug on q35 and virt finishes
after QEMU's ``device_add`` answered): its mount is retried until then. Removal unmounts in
reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from pathlib import Path

from runvm.agent import syscalls as sc
from runvm.errors import RpcError
from runvm.protocol import agent_pb2 as pb
from runvm.ttrpc import Code

STORAGE_HANDLERS = ("virtio-fs", "9p", "tmpfs", "local", "blk")
BLOCK_FSTYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs")
SYS_BLOCK = Path("/sys/block")
DISK_WAIT = 15.0  # seconds for a hot-plugged disk (or share) to show up
_FLAGS = {"ro": sc.MS_RDONLY, "nosuid": sc.MS_NOSUID, "nodev": sc.MS_NODEV,
          "noexec": sc.MS_NOEXEC}  # fmt: skip
_IGNORED = ("rw", "loop", "defaults")


def find_disk(serial: str, sys_block: Path = SYS_BLOCK) -> str | None:
    """The /dev node of the virtio disk whose serial is ``serial``, if present."""
    for disk in sorted(sys_block.glob("vd*")):
        with contextlib.suppress(OSError):
            if (disk / "serial").read_text().strip() == serial:
                return f"/dev/{disk.name}"
    return None


async def wait_disk(serial: str, timeout: float = DISK_WAIT) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while (device := find_disk(serial)) is None or not os.path.exists(device):
        if asyncio.get_running_loop().time() > deadline:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"disk {serial!r} did not appear in {timeout} s")
        await asyncio.sleep(0.05)
    return device


def _target(storage: pb.Storage) -> str:
    target = os.path.normpath(storage.mount_point)
    if not target.startswith("/run/runvm/") or storage.driver not in STORAGE_HANDLERS:
        raise RpcError(
            Code.INVALID_ARGUMENT,
            f"storage {storage.driver!r} at {storage.mount_point!r} is not allowed",
        )
    return target


async def mount_storage(storage: pb.Storage) -> str:
    """Mount one storage; returns its mount point ("" for ``local``: nothing mounted)."""
    target = _target(storage)
    os.makedirs(target, exist_ok=True)
    if storage.driver == "local":
        return ""
    if storage.driver == "blk":
        if storage.fstype not in BLOCK_FSTYPES:
            raise RpcError(Code.INVALID_ARGUMENT, f"disk filesystem {storage.fstype!r} refused")
        source, fstype = await wait_disk(storage.source), storage.fstype
        flags, data = 0, []
        for option in storage.options:
            if option in _FLAGS:
                flags |= _FLAGS[option]
            elif option not in _IGNORED:
                data.append(option)
        options = ",".join(data)
    elif storage.driver in ("virtio-fs", "9p"):  # rootfs shares keep setuid and devices
        fstype = "virtiofs" if storage.driver == "virtio-fs" else "9p"
        source, flags, options = storage.source, 0, ",".join(storage.options)
    else:
        source, fstype = storage.source, "tmpfs"
        flags, options = sc.MS_NOSUID | sc.MS_NODEV, ",".join(storage.options)
    try:
        await _mount(source, target, fstype, flags, options)
        # A peer group of its own: a container's bind of it can then be its slave or peer
        # (the propagation options of bind mounts), as binds of host mounts are under runc.
        sc.mount("", target, "", sc.MS_SHARED)
    except OSError as exc:
        raise RpcError(Code.INTERNAL, f"mount {source} on {target}: {exc}") from exc
    return target


async def _mount(source: str, target: str, fstype: str, flags: int, options: str) -> None:
    """mount(2); a virtio-fs tag the guest does not know yet (EINVAL) is retried for as long
    as a hot-plugged disk is waited for."""
    deadline = asyncio.get_running_loop().time() + DISK_WAIT
    while True:
        try:
            sc.mount(source, target, fstype, flags, options)
            return
        except OSError as exc:
            late = asyncio.get_running_loop().time() > deadline
            if fstype != "virtiofs" or exc.errno != errno.EINVAL or late:
                raise
        await asyncio.sleep(0.05)


async def mount_all(storages: list[pb.Storage]) -> list[str]:
    """Mount ``storages`` in order; on a failure unmount what was mounted and re-raise."""
    done: list[str] = []
    try:
        for storage in storages:
            if target := await mount_storage(storage):
                done.append(target)
    except BaseException:
        unmount_all(done)
        raise
    return done


def unmount_all(targets: list[str]) -> None:
    """Unmount (lazily if busy) in reverse order and remove the mount points."""
    for target in reversed(targets):
        try:
            sc.umount2(target)
        except OSError:
            with contextlib.suppress(OSError):
                sc.umount2(target, sc.MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir(target)
