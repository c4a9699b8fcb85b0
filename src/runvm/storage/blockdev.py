"""Block devices for a container: found, checked, opened, handed to the VM as virtio-blk.

A volume is a block device when an OCI mount has a block filesystem ``type`` (ext4, xfs, btrfs)
and its ``source`` is a block device, or an image file with the ``loop`` option; the guest
mounts the disk and the container gets a bind of it. A rootfs has two ways in:
- the shim: containerd's rootfs mounts are a single block filesystem mount (the devmapper
  snapshotter gives ``ext4`` on ``/dev/mapper/...``; a loop image gives a file with ``loop``):
  instead of mounting it on the host, runvm hot-plugs the device;
- the OCI command line: the bundle's annotations :data:`DEVICE_ANNOTATION` (a block device or
  an image file) and optionally :data:`FSTYPE_ANNOTATION` (default ext4).
A device or image the host has mounted is refused: two kernels writing one filesystem would
corrupt it. Contract: :func:`open_disk` returns an fd the caller closes after the hot-plug.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from runvm.errors import ConfigError
from runvm.hypervisor.base import DiskSpec

DEVICE_ANNOTATION = "io.runvm.rootfs.device"
FSTYPE_ANNOTATION = "io.runvm.rootfs.fstype"
BLOCK_FSTYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs")
GUEST_DISK_ROOT = "/run/runvm/disks"
_GUEST_OPTIONS = ("ro", "nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime",
                  "discard", "nouuid", "data=ordered", "data=writeback", "barrier=0")  # fmt: skip


@dataclass(frozen=True)
class BlockRootfs:
    source: Path  # a block device or a regular image file
    fstype: str
    options: tuple[str, ...] = ()  # mount options for the guest

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


def from_mounts(mounts: Iterable[tuple[str, str, Iterable[str]]]) -> BlockRootfs | None:
    """The block rootfs described by containerd's rootfs mounts ``(type, source, options)``,
    or None when they are something else (overlay, bind, several mounts)."""
    items = list(mounts)
    if len(items) != 1:
        return None
    kind, source, options = items[0]
    opts = tuple(options)
    if kind not in BLOCK_FSTYPES:
        return None
    path = Path(source)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"rootfs mount source {source}: {exc.strerror}") from exc
    if not (stat.S_ISBLK(mode) or (stat.S_ISREG(mode) and "loop" in opts)):
        return None
    return BlockRootfs(path, kind, tuple(o for o in opts if o in _GUEST_OPTIONS))


def needs_disks(spec: Mapping[str, object]) -> bool:
    """Whether a bundle's config.json asks for any disk (a block rootfs or block volume)."""
    annotations = spec.get("annotations") or {}
    assert isinstance(annotations, dict)
    if annotations.get(DEVICE_ANNOTATION):
        return True
    mounts = spec.get("mounts") or []
    assert isinstance(mounts, list)
    return any(isinstance(m, dict) and m.get("type") in BLOCK_FSTYPES for m in mounts)


def from_annotations(annotations: Mapping[str, str]) -> BlockRootfs | None:
    """The block rootfs a bundle's annotations ask for, or None."""
    device = annotations.get(DEVICE_ANNOTATION)
    if not device:
        return None
    fstype = annotations.get(FSTYPE_ANNOTATION, "ext4")
    if fstype not in BLOCK_FSTYPES:
        raise ConfigError(f"annotation {FSTYPE_ANNOTATION}={fstype!r}: one of {BLOCK_FSTYPES}")
    path = Path(device)
    if not path.is_absolute():
        raise ConfigError(f"annotation {DEVICE_ANNOTATION}={device!r}: needs an absolute path")
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"annotation {DEVICE_ANNOTATION}: {device}: {exc.strerror}") from exc
    if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
        raise ConfigError(f"annotation {DEVICE_ANNOTATION}: {device} is no block device or file")
    return BlockRootfs(path, fstype)


def mounted_on_host(source: Path, mountinfo: str | None = None) -> bool:
    """Whether the host has ``source`` (a device, or an image behind a loop device) mounted."""
    info = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    st = source.stat()
    devices = {st.st_rdev} if stat.S_ISBLK(st.st_mode) else _loops_backed_by(source)
    for line in info.splitlines():
        fields = line.split()
        if len(fields) > 2 and ":" in fields[2]:
            major, minor = fields[2].split(":", 1)
            if os.makedev(int(major), int(minor)) in devices:
                return True
    return False


def _loops_backed_by(image: Path) -> set[int]:
    devices = set()
    resolved = str(image.resolve())
    for loop in Path("/sys/block").glob("loop*"):
        try:
            if (loop / "loop/backing_file").read_text().strip() == resolved:
                major, minor = (loop / "dev").read_text().strip().split(":")
                devices.add(os.makedev(int(major), int(minor)))
        except OSError:
            continue
    return devices


def open_disk(rootfs: BlockRootfs, disk_id: str) -> DiskSpec:
    """Open the rootfs for the VM (refused if the host has it mounted)."""
    if mounted_on_host(rootfs.source):
        raise ConfigError(f"rootfs device {rootfs.source} is mounted on the host: the VM "
                          "cannot use it at the same time")  # fmt: skip
    flags = (os.O_RDONLY if rootfs.readonly else os.O_RDWR) | os.O_CLOEXEC
    try:
        fd = os.open(rootfs.source, flags)
    except OSError as exc:
        raise ConfigError(f"rootfs device {rootfs.source}: {exc.strerror}") from exc
    block = stat.S_ISBLK(os.fstat(fd).st_mode)
    return DiskSpec(disk_id, fd, block, serial=disk_id[-20:], readonly=rootfs.readonly)
