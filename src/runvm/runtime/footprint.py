"""What a VM costs its host cgroup, and refusing a VM that cannot fit under its pod's limit.

Contract: :func:`vm_footprint_mib` is the memory a running VM may charge to the pod's host
cgroup: the guest RAM (it may touch all of it), TCG's translation cache when the guest is
emulated, and ``HOST_OVERHEAD_MIB`` for QEMU's own memory, virtiofsd and the shim (measured
on an idle pod: QEMU 55 MiB anonymous, of which the TCG cache is 32, and 46 MiB of its
binary and libraries; two virtiofsd 8 MiB; the shim or monitor 29-35 MiB). :func:`check_fits`
raises ConfigError naming both numbers and the fix when a pod's limit is below it: such a VM
would be killed by the host's OOM killer later, taking every container with it.
"""

from __future__ import annotations

from runvm.config import RunvmConfig
from runvm.errors import ConfigError
from runvm.hypervisor.base import Accel

HOST_OVERHEAD_MIB = 112


def vm_footprint_mib(config: RunvmConfig, accel: Accel, memory_mib: int = 0) -> int:
    """Host memory of a pod with ``memory_mib`` of guest RAM (0: the configured base)."""
    tcg = config.hypervisor.tcg_tb_size_mib if accel is Accel.TCG else 0
    return (memory_mib or config.hypervisor.memory_mib) + tcg + HOST_OVERHEAD_MIB


def check_fits(config: RunvmConfig, accel: Accel, limit: int | None, memory_mib: int = 0) -> None:
    """``limit``: the pod's host memory limit in bytes (None: unlimited); ``memory_mib``:
    the VM's guest RAM (0: the configured base)."""
    if limit is None:
        return
    guest = memory_mib or config.hypervisor.memory_mib
    need = vm_footprint_mib(config, accel, guest)
    if limit < need << 20:
        raise ConfigError(
            f"the pod's memory limit ({limit >> 20} MiB) is below what its VM needs ({need} "
            f"MiB: {guest} MiB of guest RAM, the rest for QEMU, "
            "virtiofsd and the shim): give the pod's RuntimeClass an overhead "
            f"(overhead.podFixed.memory) of at least {need}Mi, or a smaller "
            "[hypervisor] memory_mib (docs/kubernetes.md)"
        )
