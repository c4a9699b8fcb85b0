"""Guest architectures: their names, and the host's.

runvm names an architecture as OCI image platforms, Go and Debian do (``amd64``, ``arm64``);
the kernel's ``uname -m`` and QEMU's target names (``x86_64``, ``aarch64``) and the ELF
machine numbers are derived here. The image builder and the hypervisor driver keep what is
specific to each (kernel fragments and make targets, QEMU machines) themselves.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from runvm.errors import ConfigError

AMD64 = "amd64"
ARM64 = "arm64"


@dataclass(frozen=True)
class Arch:
    name: str  # amd64 | arm64: OCI platform, Go, Debian
    uname: str  # the guest's ``uname -m``; also QEMU's target (qemu-system-<uname>)
    elf_machine: int  # e_machine of its ELF files
    gnu_triplet: str  # Debian's multiarch directory and cross-toolchain prefix


ARCHES = {
    AMD64: Arch(AMD64, "x86_64", 62, "x86_64-linux-gnu"),
    ARM64: Arch(ARM64, "aarch64", 183, "aarch64-linux-gnu"),
}

#: ELF machines of programs no runvm guest can run, for errors that name them.
FOREIGN_ELF_MACHINES = {3: "386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm",
                        243: "riscv64", 258: "loong64"}  # fmt: skip


def get(name: str) -> Arch:
    """The architecture ``name`` (OCI names, or ``uname -m`` ones); ConfigError if runvm has
    no guest of it."""
    for arch in ARCHES.values():
        if name in (arch.name, arch.uname):
            return arch
    raise ConfigError(f"architecture {name!r}: runvm runs guests of {' and '.join(ARCHES)} only")


def host() -> Arch:
    """The host's architecture (ConfigError on a host runvm has no guest for)."""
    return get(platform.machine())


def by_elf_machine(machine: int) -> Arch | None:
    """The architecture of ELF files of ``machine``, or None if runvm has no guest of it."""
    return next((a for a in ARCHES.values() if a.elf_machine == machine), None)


def elf_machine_name(machine: int) -> str:
    """A readable name for an ELF machine number (``arm``, ``amd64``, ``ELF machine 99``)."""
    arch = by_elf_machine(machine)
    if arch is not None:
        return arch.name
    return FOREIGN_ELF_MACHINES.get(machine, f"ELF machine {machine}")


def resolve(wanted: str) -> Arch:
    """The configured ``hypervisor.arch``: ``auto`` is the host's."""
    return host() if wanted == "auto" else get(wanted)
