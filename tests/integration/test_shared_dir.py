"""The shared directory against a guest that plants symlinks in it (real mounts, root).

The guest can write anything into the shared tree; the host must never create or mount
anything outside the sandbox's directory because of what it finds there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runvm.errors import ConfigError
from runvm.storage.mounts import is_mountpoint
from runvm.storage.shared import ReadOnly, SharedDir

pytestmark = pytest.mark.root


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[SharedDir]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    d = SharedDir(tmp_path / "sandbox" / "shared")
    d.path.parent.mkdir()
    d.setup()
    yield d
    d.teardown()
    assert not d.path.exists()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    path = tmp_path / "rootfs"
    path.mkdir()
    (path / "marker").write_text("rootfs")
    return path


def untouched(outside: Path) -> None:
    assert list(outside.iterdir()) == [], list(outside.iterdir())
    assert not is_mountpoint(str(outside))


def test_plain_shares_work(shared: SharedDir, rootfs: Path, tmp_path: Path) -> None:
    target = shared.add_rootfs("c1", rootfs)
    assert (target / "marker").read_text() == "rootfs"
    src_file = tmp_path / "file"
    src_file.write_text("file")
    assert shared.add_bind("c1", 0, src_file, readonly=ReadOnly.TOP).read_text() == "file"
    ro = shared.add_bind("c1", 1, rootfs, readonly=ReadOnly.TOP)
    with pytest.raises(OSError):
        (ro / "new").write_text("x")
    shared.remove_container("c1")
    assert not (shared.path / "c1").exists()


def test_planted_container_symlink(shared: SharedDir, rootfs: Path, outside: Path) -> None:
    (shared.path / "c1").symlink_to(outside)
    with pytest.raises(ConfigError, match="not a directory"):
        shared.add_rootfs("c1", rootfs)
    untouched(outside)


def test_planted_rootfs_symlink(shared: SharedDir, rootfs: Path, outside: Path) -> None:
    (shared.path / "c1").mkdir()
    (shared.path / "c1" / "rootfs").symlink_to(outside)
    with pytest.raises(ConfigError, match="already exists"):
        shared.add_rootfs("c1", rootfs)
    untouched(outside)


def test_planted_mounts_symlink(shared: SharedDir, tmp_path: Path, outside: Path) -> None:
    (shared.path / "c1").mkdir()
    (shared.path / "c1" / "mounts").symlink_to(outside)
    source = tmp_path / "vol"
    source.mkdir()
    with pytest.raises(ConfigError, match="not a directory"):
        shared.add_bind("c1", 0, source)
    untouched(outside)


def test_planted_file_symlink(shared: SharedDir, tmp_path: Path, outside: Path) -> None:
    (shared.path / "c1" / "mounts").mkdir(parents=True)
    (shared.path / "c1" / "mounts" / "0").symlink_to(outside / "victim")
    source = tmp_path / "file"
    source.write_text("data")
    with pytest.raises(ConfigError, match="already exists"):
        shared.add_bind("c1", 0, source)
    untouched(outside)


def test_removal_does_not_follow_planted_symlinks(
    shared: SharedDir, rootfs: Path, outside: Path
) -> None:
    (outside / "keep").write_text("keep")
    shared.add_rootfs("c1", rootfs)
    (shared.path / "c1" / "link").symlink_to(outside)
    shared.remove_container("c1")
    assert (outside / "keep").read_text() == "keep"
    assert (rootfs / "marker").read_text() == "rootfs"
