"""A deterministic cpio "newc" writer, zstd compression and initramfs overlays.

Entries are written sorted by path (a parent sorts before its children), with mtime 0,
uid/gid 0 and consecutive inode numbers, so the same tree gives the same bytes.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from runvm.errors import ImageError

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"
_MAX_SIZE = 0xFFFFFFFF


@dataclass(frozen=True)
class Entry:
    """One archive member; ``data`` is a file's content or a symlink's target."""

    path: str  # relative, no leading "/"
    mode: int  # full st_mode: file type and permission bits
    data: bytes = field(default=b"", repr=False)
    rdev: tuple[int, int] = (0, 0)  # major, minor of a device node


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def regular(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def entries_from_tree(root: Path) -> list[Entry]:
    """Every directory, regular file and symlink below ``root`` (not ``root`` itself)."""
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                entries.append(directory(rel, perm))
            elif stat.S_ISREG(st.st_mode):
                entries.append(regular(rel, path.read_bytes(), perm))
            elif stat.S_ISLNK(st.st_mode):
                entries.append(symlink(rel, os.readlink(path)))
            else:
                raise ImageError(f"{path}: cannot put this kind of file in an initramfs")
    return entries


def _header(ino: int, entry: Entry, nlink: int, namesize: int) -> bytes:
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, namesize, 0)
    return _MAGIC + b"".join(b"%08X" % value for value in fields)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def write_newc(entries: Iterable[Entry], out: BinaryIO) -> int:
    """Write ``entries`` sorted by path plus the trailer; return the bytes written."""
    ordered = sorted(entries, key=lambda e: e.path)
    written = 0
    seen: set[str] = set()
    for ino, entry in enumerate([*ordered, Entry(_TRAILER, 0)], start=1):
        if entry.path in seen or not entry.path or entry.path.startswith("/"):
            raise ImageError(f"cpio: bad or duplicate path {entry.path!r}")
        seen.add(entry.path)
        if len(entry.data) > _MAX_SIZE:
            raise ImageError(f"cpio: {entry.path} is too large for the newc format")
        name = entry.path.encode() + b"\0"
        trailer = entry.path == _TRAILER
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        head = _header(0 if trailer else ino, entry, nlink, len(name))
        chunk = head + name + _pad(len(head) + len(name)) + entry.data + _pad(len(entry.data))
        out.write(chunk)
        written += len(chunk)
    return written


def zstd(data: bytes, level: int) -> bytes:
    """Compress ``data`` to one zstd frame with the ``zstd`` binary (all cores)."""
    binary = shutil.which("zstd")
    if binary is None:
        raise ImageError("zstd not found; install it (apt-get install zstd)")
    argv = [binary, f"-{level}", "-T0", "-q", "-c"]
    proc = subprocess.run(argv, input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        raise ImageError(f"zstd failed (exit {proc.returncode}): {proc.stderr.decode().strip()}")
    return proc.stdout


def overlay_entries(files: Mapping[str, bytes]) -> list[Entry]:
    """Entries for ``files`` plus their parent directories (0755).

    A file is executable (0755) if it starts with ``#!`` or is an ELF file, else 0644.
    """
    entries: dict[str, Entry] = {}
    for name, data in files.items():
        path = name.lstrip("/")
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            entries.setdefault(parent, directory(parent))
        executable = data.startswith((b"#!", b"\x7fELF"))
        entries[path] = regular(path, data, 0o755 if executable else 0o644)
    return list(entries.values())


def append_files(
    initrd_path: Path, files: Mapping[str, bytes], out_path: Path, *, level: int = 10
) -> None:
    """Write ``initrd_path`` followed by a second compressed archive holding ``files``.

    Linux unpacks concatenated archives in order, so these files replace the image's own
    (for example ``/init`` or an agent module: a ``.py`` next to a ``.pyc`` wins on import).
    """
    buf = io.BytesIO()
    write_newc(overlay_entries(files), buf)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with tmp.open("wb") as out:
        out.write(Path(initrd_path).read_bytes())
        out.write(zstd(buf.getvalue(), level))
    tmp.replace(out_path)
