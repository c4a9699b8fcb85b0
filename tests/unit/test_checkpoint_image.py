"""Checkpoint images as the host writes and checks them (runtime/checkpoint.py), and what
the agent records and maps (agent/checkpoint.py): read with limits, refused with reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runvm import __version__
from runvm.agent import checkpoint as guest
from runvm.errors import ConfigError
from runvm.runtime import checkpoint

MADE = checkpoint.Made("6.1.192", "3.17.1-2", "amd64")


def made(tmp_path: Path) -> Path:
    images = tmp_path / "ckpt"
    images.mkdir()
    (images / "inventory.img").write_bytes(b"\x01" * 100)
    (images / "pages-1.img").write_bytes(b"\x02" * 5000)
    checkpoint.write_meta(images, "c1", MADE, terminal=False, config={"machine": "pc"})
    return images


def test_a_finished_checkpoint_is_accepted(tmp_path: Path) -> None:
    meta = checkpoint.check(made(tmp_path), MADE)
    assert meta["container"] == "c1" and meta["runvm"] == __version__
    assert set(meta["files"]) == {"inventory.img", "pages-1.img"}


@pytest.mark.parametrize(("damage", "said"), [
    (lambda d: (d / "runvm.json").unlink(), "no runvm.json"),
    (lambda d: (d / "runvm.json").write_text("{"), "is not JSON"),
    (lambda d: (d / "runvm.json").write_bytes(b" " * (checkpoint.MAX_META + 1)), "is over"),
    (lambda d: (d / "pages-1.img").unlink(), "pages-1.img is missing"),
    (lambda d: (d / "pages-1.img").write_bytes(b"\x02" * 10), "is 10 bytes"),
    (lambda d: (d / "pages-1.img").write_bytes(b"\x03" * 5000), "does not match its checksum"),
    (lambda d: (d / "pages-1.img").unlink() or (d / "pages-1.img").symlink_to("/etc/passwd"),
     "not a regular file"),
])  # fmt: skip
def test_damaged_checkpoints_are_refused_with_the_reason(tmp_path: Path, damage, said) -> None:  # type: ignore[no-untyped-def]
    images = made(tmp_path)
    damage(images)
    with pytest.raises(ConfigError, match=said):
        checkpoint.check(images, MADE)


@pytest.mark.parametrize(("key", "value", "said"), [
    ("runvm", "0.0.1", "made by runvm '0.0.1'"),
    ("kernel_release", "5.10", "made by guest kernel '5.10'"),
    ("criu", "4.0", "made by CRIU '4.0'"),
    ("arch", "arm64", "made by guest architecture 'arm64'"),
    ("format", 99, "not of a format"),
    ("files", {"../x": {"size": 1, "sha256": "a"}}, "bad file name"),
    ("files", {"inventory.img": {"size": -1, "sha256": "a"}}, "malformed"),
    ("files", {}, "lists no files"),
])  # fmt: skip
def test_a_checkpoint_another_runvm_or_guest_made_is_refused(
    tmp_path: Path, key: str, value: object, said: str
) -> None:
    images = made(tmp_path)
    meta = json.loads((images / "runvm.json").read_text())
    meta[key] = value
    (images / "runvm.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=said):
        checkpoint.check(images, MADE)


def test_no_directory_and_no_tools(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such directory"):
        checkpoint.check(tmp_path / "nope", MADE)
    with pytest.raises(ConfigError, match="needs CRIU"):
        checkpoint.made_by(None, "restore of c1")


MOUNTINFO = r"""20 19 0:22 /rootfs / rw - virtiofs runvm rw
21 20 0:5 / /proc rw - proc proc rw
22 20 0:23 / /dev rw - tmpfs tmpfs rw
23 21 0:6 /null /proc/kcore ro - devtmpfs devtmpfs rw
24 20 0:22 /c1/mounts/0 /data\040dir rw - virtiofs runvm rw
25 20 254:1 / /disk rw - ext4 /dev/vdb rw
26 20 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
garbage line
"""


def test_the_guest_finds_what_criu_must_be_told_is_external() -> None:
    assert guest.external_mounts(MOUNTINFO) == [
        {"mountpoint": "/proc/kcore", "cookie": "/dev/null", "kind": "device"},
        {"mountpoint": "/data dir", "cookie": "/data dir", "kind": "share"},
        {"mountpoint": "/disk", "cookie": "/disk", "kind": "share"},
    ]


def test_a_restore_maps_each_external_mount_to_the_new_source(tmp_path: Path) -> None:
    record: dict[str, Any] = {
        "mounts": guest.external_mounts(MOUNTINFO),
        "stdio": ["/dev/null"] * 3,
    }
    spec: dict[str, Any] = {
        "mounts": [
            {"destination": "/data dir", "source": "/run/runvm/shared/c2/mounts/0"},
            {"destination": "/disk/", "source": "/run/runvm/disks/c2/m1"},
        ]
    }
    assert guest.mount_map(record, spec) == [
        "--external", "mnt[/dev/null]:/dev/null",
        "--external", "mnt[/data dir]:/run/runvm/shared/c2/mounts/0",
        "--external", "mnt[/disk]:/run/runvm/disks/c2/m1"]  # fmt: skip
    with pytest.raises(ValueError, match="has a mount at /disk"):
        guest.mount_map(record, {"mounts": spec["mounts"][:1]})
    record["mounts"][0]["cookie"] = "/dev/../etc/shadow"
    with pytest.raises(ValueError, match="not a device node"):
        guest.mount_map(record, spec)


def test_the_guest_reads_its_record_with_limits(tmp_path: Path) -> None:
    (tmp_path / guest.RECORD).write_text(json.dumps({"mounts": [], "stdio": ["a", "b", "c"]}))
    assert guest.read_record(tmp_path)["stdio"] == ["a", "b", "c"]
    for bad in ({"mounts": [], "stdio": ["a"]}, {"mounts": [{"kind": 1}], "stdio": ["", "", ""]},
                {"stdio": ["", "", ""]}):  # fmt: skip
        (tmp_path / guest.RECORD).write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            guest.read_record(tmp_path)
    (tmp_path / guest.RECORD).write_bytes(b" " * (guest.MAX_RECORD + 1))
    with pytest.raises(ValueError, match="is over"):
        guest.read_record(tmp_path)


def test_mount_points_are_made_inside_the_root_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "escape").symlink_to(tmp_path)
    src_dir = tmp_path / "srcdir"
    src_dir.mkdir()
    spec = {"mounts": [
        {"destination": "/etc/hostname", "type": "bind", "source": "/etc/hostname"},
        {"destination": "/data/vol", "type": "bind", "source": str(src_dir)},
        {"destination": "/etc/escape/owned", "type": "bind", "source": "/etc/hostname"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/dev/fuse", "type": "bind", "source": "/dev/fuse"},
    ]}  # fmt: skip
    guest.make_mountpoints(root, spec)
    assert (root / "etc/hostname").is_file() and (root / "data/vol").is_dir()
    assert not (tmp_path / "owned").exists()  # through a symlink out of the root: never
    assert not (root / "dev").exists()  # below a tmpfs: restored with it
