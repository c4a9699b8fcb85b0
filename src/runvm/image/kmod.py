"""Kernel modules: find them by name, read ``.modinfo`` and order them for loading.

Debian's unpacked modules come without ``modules.dep`` and the host has no kmod, so each
module's ``depends=`` is read from its ``.modinfo`` ELF section.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runvm.errors import ImageError
from runvm.image.elf import ElfFile

#: Compressed module suffixes and the command that decompresses one to stdout.
_DECOMPRESSORS = {".ko.xz": ("xz", "-dc"), ".ko.zst": ("zstd", "-dcq")}
_SUFFIXES = (".ko", *_DECOMPRESSORS)


def module_name(filename: str) -> str:
    """``virtio-rng.ko.xz`` -> ``virtio_rng``: names treat '-' and '_' alike."""
    for suffix in _SUFFIXES:
        if filename.endswith(suffix):
            filename = filename[: -len(suffix)]
            break
    return filename.replace("-", "_")


def index_modules(moddir: Path) -> dict[str, Path]:
    """Every module file below ``moddir``, by normalised name."""
    found: dict[str, Path] = {}
    for path in sorted(moddir.rglob("*.ko*")):
        if path.name.endswith(_SUFFIXES):
            found.setdefault(module_name(path.name), path)
    return found


def builtin_modules(moddir: Path) -> frozenset[str]:
    """Names of modules built into the kernel (from ``modules.builtin``)."""
    listing = moddir / "modules.builtin"
    if not listing.exists():
        return frozenset()
    lines = listing.read_text().split()
    return frozenset(module_name(Path(line).name) for line in lines)


def read_module(path: Path) -> bytes:
    """The uncompressed ELF bytes of a module file."""
    for suffix, (tool, flag) in _DECOMPRESSORS.items():
        if path.name.endswith(suffix):
            binary = shutil.which(tool)
            if binary is None:
                raise ImageError(
                    f"{path}: {tool} not found to decompress it (apt-get install {tool})"
                )
            proc = subprocess.run([binary, flag, str(path)], capture_output=True, check=False)
            if proc.returncode != 0:
                raise ImageError(f"{path}: {tool} failed: {proc.stderr.decode().strip()}")
            return proc.stdout
    return path.read_bytes()


def modinfo(data: bytes, what: str = "module") -> dict[str, list[str]]:
    """The ``key=value`` strings of a module's ``.modinfo`` section, grouped by key."""
    section = ElfFile(data, what).section(".modinfo")
    if section is None:
        raise ImageError(f"{what}: no .modinfo section (not a kernel module?)")
    info: dict[str, list[str]] = {}
    for item in section.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def depends_of(info: dict[str, list[str]]) -> tuple[str, ...]:
    return tuple(
        module_name(name) for value in info.get("depends", []) for name in value.split(",") if name
    )


def load_order(wanted: Iterable[str], depends: Callable[[str], Sequence[str]]) -> list[str]:
    """``wanted`` and everything they depend on, each after its dependencies.

    Depth-first in the given order, so the result is stable; a cycle is an ImageError.
    """
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in path:
            raise ImageError(f"kernel module dependency cycle: {' -> '.join((*path, name))}")
        for dep in depends(name):
            visit(dep, (*path, name))
        done.add(name)
        order.append(name)

    for name in wanted:
        visit(module_name(name), ())
    return order


@dataclass(frozen=True)
class KernelModule:
    name: str
    relpath: str  # below /lib/modules/<release>/, always an uncompressed .ko
    depends: tuple[str, ...]
    data: bytes = field(repr=False)


def resolve_modules(moddir: Path, wanted: Sequence[str]) -> list[KernelModule]:
    """The modules ``wanted`` needs that are not built in, in load order."""
    files = index_modules(moddir)
    builtin = builtin_modules(moddir)
    loaded: dict[str, KernelModule] = {}
    needed_by: dict[str, str] = {}

    def depends(name: str) -> Sequence[str]:
        if name in builtin:
            return ()
        if name not in loaded:
            path = files.get(name)
            if path is None:
                by = f" (needed by {needed_by[name]})" if name in needed_by else ""
                raise ImageError(f"kernel module {name}{by} not found in {moddir}")
            data = read_module(path)
            deps = depends_of(modinfo(data, str(path)))
            rel = _uncompressed_relpath(path.relative_to(moddir).as_posix())
            loaded[name] = KernelModule(name, rel, deps, data)
            for dep in deps:
                needed_by.setdefault(dep, name)
        return loaded[name].depends

    order = load_order(wanted, depends)
    return [loaded[name] for name in order if name not in builtin]


def _uncompressed_relpath(rel: str) -> str:
    for suffix in _DECOMPRESSORS:
        if rel.endswith(suffix):
            return rel[: -len(suffix)] + ".ko"
    return rel
