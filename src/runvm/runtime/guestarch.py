"""Which architecture a container's VM needs, read from the container itself.

Contract of :func:`container_arch`: the architecture of the container's program is the ELF
machine of ``process.args[0]`` in its rootfs (found on the spec's ``PATH``, symbolic links
followed inside the rootfs, a ``#!`` script followed to its interpreter); the annotation
``io.runvm.arch`` may name it instead (a block-device rootfs the host cannot read). With
``hypervisor.arch = "auto"`` the VM takes that architecture (the host's when there is none
to read); with a fixed ``hypervisor.arch`` a container of another one is refused. A program
built for an architecture runvm has no guest for, or an annotation that contradicts the
program, is a ConfigError naming both. Engines need nothing of their own: ``ctr run
--platform linux/arm64``, ``docker run --platform linux/arm64`` and ``podman run --arch
arm64`` hand over a rootfs whose programs are arm64.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runvm import arch as arches
from runvm.config import RunvmConfig
from runvm.errors import ConfigError

ANNOTATION = "io.runvm.arch"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_LINKS = 40
MAX_SCRIPTS = 4  # a script's interpreter may itself be a script, this deep
_ELF = b"\x7fELF"


def _resolve(root: Path, path: str) -> Path | None:
    """``path`` inside ``root`` as the container would see it (every symbolic link followed
    with ``root`` as ``/``); None if it leads nowhere."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == ".":
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, name)
        if here.is_symlink():
            hops += 1
            if hops > MAX_LINKS:
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(name)
    found = root.joinpath(*done)
    return found if found.is_file() else None


def _find(root: Path, program: str, env: list[str]) -> tuple[str, Path] | None:
    """(container path, host path) of ``program``, looked up on the spec's PATH."""
    if "/" in program:
        found = _resolve(root, program)
        return (program, found) if found else None
    path = next((e[5:] for e in env if e.startswith("PATH=")), DEFAULT_PATH)
    for directory in path.split(":"):
        candidate = posixpath.join(directory or "/", program)
        found = _resolve(root, candidate)
        if found is not None:
            return candidate, found
    return None


def _head(path: Path) -> bytes | None:
    """The first bytes of the regular file ``path``, or None. The rootfs is the container's:
    the file may have been swapped for a link (never followed) or a FIFO (never waited on)
    since it was looked up."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 256) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _elf_machine(head: bytes) -> int | None:
    if len(head) < 20 or head[:4] != _ELF or head[5] not in (1, 2):
        return None
    (machine,) = struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)
    return int(machine)


def program_machine(rootfs: Path, process: Mapping[str, Any]) -> tuple[int, str] | None:
    """(ELF machine, container path of the ELF file) of the process's program, or None if
    it cannot be found or read, or is neither ELF nor a script."""
    args = process.get("args") or []
    env = [e for e in process.get("env") or [] if isinstance(e, str)]
    if not args or not isinstance(args[0], str):
        return None
    program = args[0]
    for _ in range(MAX_SCRIPTS + 1):
        found = _find(rootfs, program, env)
        if found is None:
            return None
        where, path = found
        head = _head(path)
        if head is None:
            return None
        machine = _elf_machine(head)
        if machine is not None:
            return machine, where
        if not head.startswith(b"#!"):
            return None
        words = head[2:].split(b"\n", 1)[0].split()
        if not words:
            return None
        program = words[0].decode(errors="replace")
    return None


def _annotated(container_id: str, spec: Mapping[str, Any]) -> arches.Arch | None:
    value = (spec.get("annotations") or {}).get(ANNOTATION)
    if value is None:
        return None
    try:
        return arches.get(str(value))
    except ConfigError as exc:
        raise ConfigError(f"container {container_id}: annotation {ANNOTATION}: {exc}") from None


def container_arch(
    config: RunvmConfig, container_id: str, spec: Mapping[str, Any], rootfs: Path | None
) -> arches.Arch:
    """The architecture of the VM that runs this container (see the module docstring);
    ``rootfs`` None: not readable on the host."""
    annotated = _annotated(container_id, spec)
    found = program_machine(rootfs, spec.get("process") or {}) if rootfs else None
    program: arches.Arch | None = None
    if found is not None:
        machine, where = found
        program = arches.by_elf_machine(machine)
        if program is None:
            raise ConfigError(
                f"container {container_id}: its program {where} is built for "
                f"{arches.elf_machine_name(machine)}; runvm runs containers of "
                f"{' and '.join(arches.ARCHES)} only"
            )
        if annotated is not None and annotated != program:
            raise ConfigError(f"container {container_id}: annotation {ANNOTATION} says "
                              f"{annotated.name}, but its program {where} is built for "
                              f"{program.name}")  # fmt: skip
    arch = annotated or program
    wanted = config.hypervisor.arch
    if wanted == "auto":
        return arch or arches.host()
    fixed = arches.get(wanted)
    if arch is not None and arch != fixed:
        why = f"its program {found[1]}" if found is not None else f"annotation {ANNOTATION}"
        raise ConfigError(f"container {container_id} is built for {arch.name} ({why}), but "
                          f"this runvm's guests are {fixed.name} (hypervisor.arch): set "
                          'hypervisor.arch = "auto" to run it in a VM of its own '
                          "architecture")  # fmt: skip
    return fixed


def pod_mismatch(container_id: str, arch: arches.Arch, pod_id: str, pod_arch: str) -> None:
    """ConfigError if a container of ``arch`` joins pod ``pod_id`` whose VM is ``pod_arch``."""
    if arch.name != pod_arch:
        raise ConfigError(f"container {container_id} is built for {arch.name}, but pod "
                          f"{pod_id}'s VM is {pod_arch}: a pod's containers share one VM, so "
                          "one architecture")  # fmt: skip


def for_arch(config: RunvmConfig, arch: arches.Arch) -> RunvmConfig:
    """``config`` for a VM of ``arch``: ``hypervisor.arch`` set to it."""
    if config.hypervisor.arch == arch.name:
        return config
    if arch != arches.host() and (config.image.kernel or config.image.initrd):
        raise ConfigError(f"an {arch.name} container needs an {arch.name} guest, and "
                          "image.kernel/image.initrd name explicit files runvm cannot tell "
                          f'the architecture of: set hypervisor.arch = "{arch.name}" if they '
                          "are that")  # fmt: skip
    hv = dataclasses.replace(config.hypervisor, arch=arch.name)  # type: ignore[arg-type]
    return dataclasses.replace(config, hypervisor=hv)
