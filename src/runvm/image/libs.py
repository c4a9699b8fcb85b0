"""Shared libraries: the transitive ``DT_NEEDED`` closure of ELF files, from a staging root.

The staging root is the unpacked Debian packages; library lookup follows glibc's default
search path for a system without ``ld.so.cache`` (multiarch directories first).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from runvm.errors import ImageError
from runvm.image.elf import ElfFile

_SEARCH_PATTERNS = ("lib/*-linux-*", "usr/lib/*-linux-*", "lib", "usr/lib")
_MAX_LINKS = 40


def search_dirs(staging: Path) -> list[str]:
    dirs: list[str] = []
    for pattern in _SEARCH_PATTERNS:
        for path in sorted(staging.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                dirs.append(path.relative_to(staging).as_posix())
    return dirs


def _next_hop(staging: Path, rel: str) -> str | None:
    """Where the symlink ``staging/rel`` points, as a path inside staging; None if no link."""
    path = staging / rel
    if not path.is_symlink():
        return None
    target = os.readlink(path)
    joined = target if target.startswith("/") else posixpath.join(posixpath.dirname(rel), target)
    return posixpath.normpath(joined).lstrip("/")


def resolve(staging: Path, rel: str) -> str:
    """``rel`` with symlinks followed inside ``staging`` (absolute targets stay inside)."""
    for _ in range(_MAX_LINKS):
        hop = _next_hop(staging, rel)
        if hop is None:
            return rel
        rel = hop
    raise ImageError(f"/{rel}: too many levels of symbolic links in the staged packages")


def install(staging: Path, root: Path, rel: str) -> None:
    """Copy ``staging/rel`` to ``root/rel``, keeping each symlink on the way and its target."""
    for _ in range(_MAX_LINKS):
        src, dst = staging / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        hop = _next_hop(staging, rel)
        if hop is None:
            if not src.is_file():
                raise ImageError(f"/{rel} is not in the staged packages")
            if not dst.exists():
                shutil.copy2(src, dst)
            return
        if not dst.is_symlink():
            dst.symlink_to(os.readlink(src))
        rel = hop
    raise ImageError(f"/{rel}: too many levels of symbolic links in the staged packages")


def guess_package(soname: str) -> str:
    """Debian's usual package for a soname: libfoo.so.1 -> libfoo1, libbar2.so.0 -> libbar2-0."""
    match = re.fullmatch(r"(.+)\.so\.(.+)", soname)
    if match is None:
        return soname
    name, version = match.groups()
    return f"{name}-{version}" if name[-1].isdigit() else f"{name}{version}"


def needed_closure(staging: Path, root: Path, elf_files: Iterable[Path]) -> list[str]:
    """Paths (inside staging) of every library and loader ``root/elf_files`` need, transitively.

    A library is named by the path its soname is found at, which may be a symlink.
    """
    dirs = search_dirs(staging)
    queue = [(root / path, f"/{path}") for path in elf_files]
    seen: set[str] = set()
    result: list[str] = []
    while queue:
        path, shown = queue.pop(0)
        elf = ElfFile(path.read_bytes(), shown)
        wants: list[str] = []
        if elf.interpreter is not None:
            wants.append(elf.interpreter.lstrip("/"))
        for soname in elf.needed:
            found = next(
                (f"{d}/{soname}" for d in dirs if os.path.lexists(staging / d / soname)), None
            )
            if found is None:
                raise ImageError(
                    f"{soname} (needed by {shown}) is in none of the staged packages; add the "
                    f"package that ships it (probably {guess_package(soname)}) to "
                    "LIBRARY_PACKAGES in runvm/image/spec.py"
                )
            wants.append(found)
        for rel in wants:
            if rel in seen:
                continue
            real = resolve(staging, rel)
            if not (staging / real).is_file():
                raise ImageError(f"/{rel} (needed by {shown}) is missing from the staged packages")
            seen.add(rel)
            result.append(rel)
            queue.append((staging / real, "/" + rel))
    return result
