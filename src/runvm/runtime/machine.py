"""The machine and agent channel a sandbox's VM gets (pure choices from the config)."""

from __future__ import annotations

import logging
import os

from runvm import arch as arches
from runvm.config import RunvmConfig
from runvm.errors import ConfigError
from runvm.hypervisor.qemu.machines import machine_capabilities, target
from runvm.runtime import sizing

log = logging.getLogger(__name__)


def channel_kind(wanted: str) -> str:
    """virtio-serial or vsock: ``auto`` picks vsock where /dev/vhost-vsock exists."""
    if wanted == "auto":
        return "vsock" if os.path.exists("/dev/vhost-vsock") else "virtio-serial"
    return wanted


def machine_for(config: RunvmConfig, needs_hotplug: bool = False) -> str:
    """The configured machine, or ``hypervisor.hotplug_machine`` for a sandbox that will
    hot-plug devices (a block-device rootfs) when the configured one cannot (microvm). Both
    name x86_64 machines: an arm64 guest's is virt."""
    machines = target(arches.resolve(config.hypervisor.arch).name).machines
    machine: str = config.hypervisor.machine
    if machine not in machines:
        return machines[0]
    if not needs_hotplug or machine_capabilities(machine).hotplug_blk:
        return machine
    fallback = config.hypervisor.hotplug_machine
    if not fallback:
        raise ConfigError(f"a block device for this container needs device hot-plug, which "
                          f"machine {machine} lacks (and hypervisor.hotplug_machine is \"\"): "
                          'set hypervisor.hotplug_machine = "pc"')  # fmt: skip
    log.info("machine %s cannot hot-plug devices; this sandbox boots as %s "
             "(hypervisor.hotplug_machine)", machine, fallback)  # fmt: skip
    return fallback


ROOM_ALIGN_MIB = 128  # the guest's memory block


def room(config: RunvmConfig, machine: str, size: sizing.Size) -> tuple[int, int]:
    """(max_vcpus, hot-pluggable MiB) a VM of ``size`` gets on ``machine``: up to the caps
    (sizing.caps) where the machine can grow vCPUs or memory (pc, q35, virt), none on
    microvm."""
    can = machine_capabilities(machine)
    cap = sizing.caps(config)
    memory = -(-max(cap.memory_mib - size.memory_mib, 0) // ROOM_ALIGN_MIB) * ROOM_ALIGN_MIB
    vcpus = max(cap.vcpus, size.vcpus) if can.grow_vcpus else 0
    return vcpus, memory if can.grow_memory else 0


def guest_cid(sandbox_id: str) -> int:
    """A guest vsock CID derived from the id (3 .. 2**31)."""
    return 3 + (int.from_bytes(sandbox_id.encode()[-8:].rjust(8, b"\0"), "big") % (2**31 - 4))
