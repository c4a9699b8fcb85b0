"""Shared-library closure and symlink-preserving installs in a fake staging root."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from runvm.errors import ImageError
from runvm.image import libs
from runvm.image.elf import ElfFile

TRUE = Path("/bin/true").resolve()


def _host_lib(soname: str) -> Path:
    for pattern in ("/lib/*-linux-*/", "/usr/lib/*-linux-*/", "/lib64/", "/lib/"):
        for directory in sorted(Path("/").glob(pattern.lstrip("/"))):
            if (directory / soname).exists():
                return (directory / soname).resolve()
    pytest.skip(f"{soname} not found on the host")


def _staging(tmp_path: Path) -> tuple[Path, Path, str]:
    """A staging root shaped like Debian's libc6 package, with /usr/bin/true."""
    staging, root = tmp_path / "staging", tmp_path / "root"
    elf = ElfFile(TRUE.read_bytes())
    assert elf.interpreter is not None
    multiarch = "lib/x86_64-linux-gnu"
    (staging / multiarch).mkdir(parents=True)
    for soname in elf.needed:
        shutil.copy(_host_lib(soname), staging / multiarch / (soname + ".real"))
        os.symlink(soname + ".real", staging / multiarch / soname)
    loader = Path(elf.interpreter).name
    shutil.copy(Path(elf.interpreter).resolve(), staging / multiarch / loader)
    link = staging / elf.interpreter.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        os.symlink(f"/{multiarch}/{loader}", link)  # absolute, as in libc6
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy(TRUE, root / "usr/bin/true")
    return staging, root, elf.interpreter


def test_needed_closure_follows_links_inside_staging(tmp_path: Path) -> None:
    staging, root, interpreter = _staging(tmp_path)
    found = libs.needed_closure(staging, root, [Path("usr/bin/true")])
    assert interpreter.lstrip("/") in found
    assert "lib/x86_64-linux-gnu/libc.so.6" in found
    for rel in found:
        libs.install(staging, root, rel)
    libc = root / "lib/x86_64-linux-gnu/libc.so.6"
    assert libc.is_symlink() and os.readlink(libc) == "libc.so.6.real"
    assert (root / "lib/x86_64-linux-gnu/libc.so.6.real").is_file()
    assert (root / interpreter.lstrip("/")).is_symlink() or (root / interpreter[1:]).is_file()
    # Everything the loader needs is in root now: nothing more to add.
    again = libs.needed_closure(root, root, [Path("usr/bin/true")])
    assert set(again) == set(found)


def test_missing_library_names_package(tmp_path: Path) -> None:
    staging, root, _ = _staging(tmp_path)
    (staging / "lib/x86_64-linux-gnu/libc.so.6").unlink()
    with pytest.raises(ImageError, match=r"libc\.so\.6 \(needed by /usr/bin/true\).*libc6"):
        libs.needed_closure(staging, root, [Path("usr/bin/true")])


def test_guess_package() -> None:
    assert libs.guess_package("libuuid.so.1") == "libuuid1"
    assert libs.guess_package("libsqlite3.so.0") == "libsqlite3-0"
    assert libs.guess_package("libbz2.so.1.0") == "libbz2-1.0"


def test_resolve_stays_inside_staging(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    os.symlink("/a/b", tmp_path / "link")
    os.symlink("../a/c", tmp_path / "a/b")
    assert libs.resolve(tmp_path, "link") == "a/c"
    os.symlink("loop", tmp_path / "loop")
    with pytest.raises(ImageError, match="too many levels"):
        libs.resolve(tmp_path, "loop")
