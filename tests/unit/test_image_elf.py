"""ELF64 reading: sections by name, DT_NEEDED, PT_INTERP."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from runvm.errors import ImageError
from runvm.image.elf import ElfFile, is_elf

_SHT_PROGBITS, _SHT_STRTAB = 1, 3


def make_elf(sections: dict[str, bytes]) -> bytes:
    """A minimal little-endian ELF64 relocatable file holding ``sections`` (like a .ko)."""
    names = [*sections, ".shstrtab"]
    shstrtab = b"\0" + b"".join(name.encode() + b"\0" for name in names)
    contents = [*sections.values(), shstrtab]
    body = b""
    placed = []
    for content in contents:
        placed.append((64 + len(body), len(content)))
        body += content
    body += b"\0" * (-len(body) % 8)
    shoff = 64 + len(body)
    headers = bytes(64)  # the null section
    name_at = 1
    for i, (name, (offset, size)) in enumerate(zip(names, placed, strict=True)):
        kind = _SHT_STRTAB if i == len(names) - 1 else _SHT_PROGBITS
        headers += struct.pack("<IIQQQQIIQQ", name_at, kind, 0, 0, offset, size, 0, 0, 1, 0)
        name_at += len(name) + 1
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    # type ET_REL, machine x86-64, version, entry, phoff, shoff, flags, ehsize,
    # phentsize, phnum, shentsize, shnum, shstrndx
    fields = (1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(names) + 1, len(names))
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, *fields)
    return ehdr + body + headers


def test_section_by_name() -> None:
    elf = ElfFile(make_elf({".text": b"\x90" * 7, ".modinfo": b"license=GPL\0"}))
    assert elf.section(".modinfo") == b"license=GPL\0"
    assert elf.section(".text") == b"\x90" * 7
    assert elf.section(".missing") is None
    assert elf.needed == []
    assert elf.interpreter is None


def test_not_elf_and_truncated() -> None:
    assert not is_elf(b"#!/bin/sh\n")
    with pytest.raises(ImageError, match="not an ELF file"):
        ElfFile(b"#!/bin/sh\n", "script")
    data = make_elf({".modinfo": b"x=1\0"})
    with pytest.raises(ImageError, match="truncated or corrupt"):
        ElfFile(data[:-40], "cut.ko")
    with pytest.raises(ImageError, match="64-bit"):
        ElfFile(data[:4] + b"\x01" + data[5:], "elf32")


def _readelf_needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf not installed")
def test_needed_and_interpreter_match_readelf() -> None:
    path = Path("/bin/ls").resolve()
    elf = ElfFile(path.read_bytes(), str(path))
    assert elf.needed == _readelf_needed(path)
    assert "libc.so.6" in elf.needed
    out = subprocess.run(["readelf", "-l", str(path)], capture_output=True, text=True).stdout
    interp = out.split("[Requesting program interpreter: ", 1)[1].split("]", 1)[0]
    assert elf.interpreter == interp
