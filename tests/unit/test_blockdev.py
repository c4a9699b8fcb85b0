"""Which rootfs goes to the VM as a disk, and how the guest finds that disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runvm.agent.storage import find_disk
from runvm.errors import ConfigError
from runvm.storage import blockdev


def test_block_mounts_become_a_disk_and_others_do_not(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    got = blockdev.from_mounts([("ext4", str(image), ["loop", "rw", "noatime", "errors=x"])])
    assert got == blockdev.BlockRootfs(image, "ext4", ("noatime",))  # only guest mount options
    assert not got.readonly
    # A regular file without "loop" is no disk; overlay and several mounts are not either.
    assert blockdev.from_mounts([("ext4", str(image), ["rw"])]) is None
    assert blockdev.from_mounts([("overlay", "overlay", ["lowerdir=/a"])]) is None
    assert blockdev.from_mounts([("bind", str(tmp_path), ["rbind"])]) is None
    assert blockdev.from_mounts([]) is None
    two = [("ext4", str(image), ["loop"]), ("ext4", str(image), ["loop"])]
    assert blockdev.from_mounts(two) is None
    with pytest.raises(ConfigError, match="rootfs mount source"):
        blockdev.from_mounts([("ext4", str(tmp_path / "gone"), ["loop"])])


def test_annotations_name_a_disk_checked_before_use(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0")
    assert blockdev.from_annotations({}) is None
    got = blockdev.from_annotations({blockdev.DEVICE_ANNOTATION: str(image)})
    assert got == blockdev.BlockRootfs(image, "ext4")
    bad = [
        ({blockdev.DEVICE_ANNOTATION: "rel/disk.img"}, "absolute path"),
        ({blockdev.DEVICE_ANNOTATION: str(tmp_path / "gone")}, "No such file"),
        ({blockdev.DEVICE_ANNOTATION: str(tmp_path)}, "no block device or file"),
        ({blockdev.DEVICE_ANNOTATION: str(image), blockdev.FSTYPE_ANNOTATION: "vfat"}, "vfat"),
    ]
    for given, message in bad:
        with pytest.raises(ConfigError, match=message):
            blockdev.from_annotations(given)


def test_a_block_device_in_mountinfo_counts_as_mounted(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mknod)")
    rdev = os.makedev(7, 200)  # a block node; only its device number matters
    fake = tmp_path / "dev"
    os.mknod(fake, 0o600 | stat.S_IFBLK, rdev)
    line = "36 35 7:200 / /mnt rw - ext4 /dev/x rw\n"
    assert blockdev.mounted_on_host(fake, line)
    assert not blockdev.mounted_on_host(fake, "36 35 254:1 / /mnt rw - ext4 /dev/y rw\n")


def test_guest_finds_the_disk_by_serial(tmp_path: Path) -> None:
    for name, serial in (("vda", "other"), ("vdb", "rabc")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "serial").write_text(serial + "\n")
    (tmp_path / "vdc").mkdir()  # a disk without a serial file is skipped
    assert find_disk("rabc", tmp_path) == "/dev/vdb"
    assert find_disk("missing", tmp_path) is None
