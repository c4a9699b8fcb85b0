"""Just enough ELF64 to read a section by name, ``DT_NEEDED`` and ``PT_INTERP``.

The host has neither kmod nor a guaranteed binutils, and what is needed is three lookups in
the section and program header tables.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from runvm.errors import ImageError

ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_SHN_XINDEX = 0xFFFF
_SHT_DYNAMIC = 6
_DT_NULL = 0
_DT_NEEDED = 1
_PT_INTERP = 3
# Field layouts after the byte-order prefix.
_EHDR_OFFSETS = "QQ"  # e_phoff, e_shoff at 0x20
_EHDR_COUNTS = "HHHHH"  # e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx at 0x36
_SHDR = "IIQQQQIIQQ"  # name, type, flags, addr, offset, size, link, info, addralign, entsize
_PHDR = "IIQQQQQQ"  # type, flags, offset, vaddr, paddr, filesz, memsz, align
_DYN = "qQ"  # d_tag, d_val


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int
    link: int


class ElfFile:
    """A parsed ELF64 image held in memory; ``what`` names it in errors."""

    def __init__(self, data: bytes, what: str = "ELF file") -> None:
        self.data = data
        self.what = what
        if not is_elf(data):
            raise ImageError(f"{what}: not an ELF file")
        if data[4] != _ELFCLASS64:
            raise ImageError(f"{what}: not a 64-bit ELF file")
        order = {1: "<", 2: ">"}.get(data[5])
        if order is None:
            raise ImageError(f"{what}: unknown ELF byte order {data[5]}")
        self._order = order
        try:
            self._phoff, self._shoff = self._unpack(_EHDR_OFFSETS, 0x20)
            self._phentsize, self._phnum, self._shentsize, shnum, shstrndx = self._unpack(
                _EHDR_COUNTS, 0x36
            )
            self.sections = self._read_sections(shnum, shstrndx)
            #: The ``DT_NEEDED`` sonames in file order (empty for a static file).
            self.needed = self._read_needed()
            #: The ``PT_INTERP`` path (the dynamic loader), or None.
            self.interpreter = self._read_interpreter()
        except (struct.error, IndexError, ValueError) as exc:
            raise ImageError(f"{what}: truncated or corrupt ELF headers") from exc

    def _unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        return struct.unpack_from(self._order + fmt, self.data, offset)

    def _cstring(self, offset: int) -> str:
        end = self.data.index(b"\0", offset)
        return self.data[offset:end].decode()

    def _read_sections(self, shnum: int, shstrndx: int) -> list[Section]:
        if self._shoff == 0:
            return []
        raw = [
            self._unpack(_SHDR, self._shoff + i * self._shentsize)
            for i in range(shnum or self._unpack(_SHDR, self._shoff)[5])  # extended numbering
        ]
        if shstrndx == _SHN_XINDEX:
            shstrndx = raw[0][6]
        names_at = raw[shstrndx][4]
        return [Section(self._cstring(names_at + r[0]), r[1], r[4], r[5], r[6]) for r in raw]

    def section(self, name: str) -> bytes | None:
        """The contents of the first section called ``name``, or None."""
        for sec in self.sections:
            if sec.name == name:
                return self.data[sec.offset : sec.offset + sec.size]
        return None

    def _read_needed(self) -> list[str]:
        result: list[str] = []
        for sec in self.sections:
            if sec.type != _SHT_DYNAMIC:
                continue
            strtab = self.sections[sec.link].offset
            for pos in range(sec.offset, sec.offset + sec.size, struct.calcsize(_DYN)):
                tag, value = self._unpack(_DYN, pos)
                if tag == _DT_NULL:
                    break
                if tag == _DT_NEEDED:
                    result.append(self._cstring(strtab + value))
        return result

    def _read_interpreter(self) -> str | None:
        for i in range(self._phnum):
            ptype, _flags, offset, _va, _pa, filesz, *_ = self._unpack(
                _PHDR, self._phoff + i * self._phentsize
            )
            if ptype == _PT_INTERP:
                return self.data[offset : offset + filesz].rstrip(b"\0").decode()
        return None
