"""QEMU's guest architectures and machine types, and what each machine can do (declared here,
never guessed by callers), for the QEMU 7.2 runvm drives.

- amd64 (``qemu-system-x86_64``): ``pc``, ``q35``, ``microvm``; the 8250 UART.
- arm64 (``qemu-system-aarch64``): ``virt``, booting the kernel's Image directly with a device
  tree; the PL011 UART. Its vCPUs cannot be hot-plugged (QEMU 7.2 has no CPU hot-plug on
  arm), so every vCPU a VM may grow to is there from boot and the guest onlines them as
  needed; memory grows and shrinks through virtio-mem as on pc and q35 (measured with
  Debian's 7.2); its aarch64 QEMU has no virtio-pmem device, so no DAX boots.
"""

from __future__ import annotations

from dataclasses import dataclass

from runvm import arch as arches
from runvm.errors import ConfigError
from runvm.hypervisor.base import Accel, Capabilities


@dataclass(frozen=True)
class Target:
    """What differs between QEMU's guest architectures."""

    console: str  # the serial console's device in the guest
    kernel_params: tuple[str, ...]  # the architecture's own kernel parameters
    machines: tuple[str, ...]  # the machine types runvm boots it on
    package: str  # the Debian package with its QEMU


TARGETS = {
    arches.AMD64: Target("ttyS0", ("reboot=t", "tsc=reliable"), ("pc", "q35", "microvm"),
                         "qemu-system-x86"),
    arches.ARM64: Target("ttyAMA0", (), ("virt",), "qemu-system-arm"),
}  # fmt: skip

_PCI = Capabilities(virtio_fs=True, vsock=True, virtio_serial=True, hotplug_net=True,
                    hotplug_blk=True, grow_vcpus=True, hotplug_vcpus=True, grow_memory=True,
                    pmem=True)  # fmt: skip
MACHINES = {
    "pc": _PCI,
    "q35": _PCI,
    # No PCI bus: virtio-mmio devices fixed at start, nothing hot-plugged, no growth.
    "microvm": Capabilities(virtio_fs=True, vsock=True, virtio_serial=True),
    # PCIe root ports take hot-plugged devices; vCPUs are onlined, not plugged; virtio-mem.
    "virt": Capabilities(virtio_fs=True, vsock=True, virtio_serial=True, hotplug_net=True,
                         hotplug_blk=True, grow_vcpus=True, grow_memory=True),
}  # fmt: skip


def target(arch: str) -> Target:
    try:
        return TARGETS[arch]
    except KeyError:
        raise ConfigError(f"no QEMU target for architecture {arch!r}") from None


def machine_capabilities(machine: str) -> Capabilities:
    """What QEMU offers on ``machine`` (see the module docstring)."""
    try:
        return MACHINES[machine]
    except KeyError:
        raise ConfigError(
            f"unknown QEMU machine {machine!r}: one of {', '.join(MACHINES)}"
        ) from None


def machine_arg(machine: str, accel: Accel, memory_backend: bool = True) -> str:
    """``-machine``'s value: the type, on virt the interrupt controller (the host's under KVM;
    an emulated GICv3 otherwise), and guest RAM from the ``mem`` backend."""
    options = [machine]
    if machine == "virt":
        options.append(f"gic-version={'host' if accel is Accel.KVM else 3}")
    if memory_backend:
        options.append("memory-backend=mem")
    return ",".join(options)


def binary_name(path: str, arch: str) -> str:
    """``hypervisor.path`` for a guest of ``arch``: ``{target}`` becomes QEMU's name of it."""
    return path.replace("{target}", arches.get(arch).uname)
