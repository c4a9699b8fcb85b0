"""The newc writer, checked against GNU cpio, and initramfs overlays."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from runvm.errors import ImageError
from runvm.image import cpio

needs_tools = pytest.mark.skipif(
    shutil.which("cpio") is None or shutil.which("zstd") is None, reason="needs cpio and zstd"
)


def _archive(entries: list[cpio.Entry]) -> bytes:
    buf = io.BytesIO()
    size = cpio.write_newc(entries, buf)
    assert size == len(buf.getvalue())
    return buf.getvalue()


def _unpack(data: bytes, dest: Path) -> None:
    dest.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
        input=data,
        cwd=dest,
        check=True,
    )


def test_header_layout_golden() -> None:
    data = _archive([cpio.regular("a", b"xyz", 0o640)])
    head = data[:110]
    assert head.startswith(b"070701")
    fields = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    # ino, mode, uid, gid, nlink, mtime, filesize, devmaj, devmin, rdevmaj, rdevmin, namesize, check
    assert fields == [1, 0o100640, 0, 0, 1, 0, 3, 0, 0, 0, 0, 2, 0]
    assert data[110:112] == b"a\0"
    assert data[112:115] == b"xyz" and data[115:116] == b"\0"  # name and data padded to 4
    assert data[116:122] == b"070701"
    assert data.rstrip(b"\0").endswith(b"TRAILER!!!")
    assert len(data) % 4 == 0


def test_deterministic_and_sorted() -> None:
    entries = [
        cpio.regular("usr/bin/x", b"1"),
        cpio.directory("usr/bin"),
        cpio.directory("usr"),
    ]
    assert _archive(entries) == _archive(list(reversed(entries)))
    data = _archive(entries)
    assert data.index(b"usr\0") < data.index(b"usr/bin\0") < data.index(b"usr/bin/x\0")


def test_rejects_duplicates_and_absolute_paths() -> None:
    with pytest.raises(ImageError, match="duplicate"):
        _archive([cpio.directory("a"), cpio.directory("a")])
    with pytest.raises(ImageError, match="bad"):
        _archive([cpio.directory("/a")])


@needs_tools
def test_gnu_cpio_unpacks_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "usr/bin/tool").chmod(0o755)
    (src / "etc").mkdir()
    (src / "etc/odd").write_bytes(b"12345")  # a size that needs padding
    (src / "etc/odd").chmod(0o600)
    (src / "etc/empty").write_bytes(b"")
    (src / "tmp").mkdir()
    (src / "tmp").chmod(0o1777)
    os.symlink("/usr/bin/tool", src / "etc/abs-link")
    os.symlink("odd", src / "etc/rel-link")
    entries = cpio.entries_from_tree(src)
    assert {e.path for e in entries} == {
        "usr", "usr/bin", "usr/bin/tool", "etc", "etc/odd", "etc/empty", "tmp",
        "etc/abs-link", "etc/rel-link",
    }  # fmt: skip
    out = tmp_path / "out"
    _unpack(_archive(entries), out)
    assert (out / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((out / "usr/bin/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "etc/odd").stat().st_mode) == 0o600
    assert (out / "etc/odd").read_bytes() == b"12345"
    assert (out / "etc/empty").read_bytes() == b""
    assert stat.S_IMODE((out / "tmp").stat().st_mode) == 0o1777
    assert os.readlink(out / "etc/abs-link") == "/usr/bin/tool"
    assert os.readlink(out / "etc/rel-link") == "odd"
    assert (out / "etc/odd").stat().st_mtime == 0


@needs_tools
def test_gnu_cpio_lists_device_node() -> None:
    data = _archive([cpio.directory("dev"), cpio.chardev("dev/console", 5, 1)])
    listing = subprocess.run(
        ["cpio", "-tv", "--quiet"], input=data, capture_output=True, check=True
    ).stdout.decode()
    line = next(line for line in listing.splitlines() if line.endswith("dev/console"))
    assert line.split()[0] == "crw-------"
    assert " ".join(line.split()).count("5, 1 ") == 1


def test_overlay_entries_add_parents_and_modes() -> None:
    entries = {e.path: e for e in cpio.overlay_entries({"/init": b"#!/x\n", "a/b/c.txt": b"t"})}
    assert set(entries) == {"init", "a", "a/b", "a/b/c.txt"}
    assert entries["init"].mode == stat.S_IFREG | 0o755
    assert entries["a/b/c.txt"].mode == stat.S_IFREG | 0o644
    assert entries["a/b"].mode == stat.S_IFDIR | 0o755


@needs_tools
def test_append_files_concatenates_a_second_archive(tmp_path: Path) -> None:
    base = cpio.zstd(_archive([cpio.regular("init", b"old", 0o755)]), 3)
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(base)
    variant = tmp_path / "variant.img"
    cpio.append_files(initrd, {"/init": b"#!new\n", "/usr/lib/x.py": b"pass\n"}, variant)
    data = variant.read_bytes()
    assert data.startswith(base)
    second = subprocess.run(
        ["zstd", "-dcq"], input=data[len(base) :], capture_output=True, check=True
    ).stdout
    out = tmp_path / "out"
    _unpack(second, out)
    assert (out / "init").read_bytes() == b"#!new\n"
    assert (out / "usr/lib/x.py").read_bytes() == b"pass\n"
