"""Growing and shrinking a running QEMU guest over QMP.

vCPUs come and go as CPU devices (``device_add``/``device_del``, ACPI hot-plug on pc and q35)
in the free slots ``-smp maxcpus`` left; only the ones added here (ids ``vcpu-…``) are ever
removed, newest first, and the boot vCPUs stay. Under TCG, QEMU 7.2 corrupts its heap when a
vCPU is plugged again after an unplug, so there vCPUs are never unplugged: the guest offlines
the surplus instead (agent OnlineCPUs) and onlines it again on the next growth. Memory is
the virtio-mem device's ``requested-size``; its ``size`` is what the guest has actually
plugged, which may stay above the request when the guest cannot free the memory. Both wait,
up to a timeout, for the guest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from runvm.errors import HypervisorError
from runvm.hypervisor.qemu.argv import VIRTIO_MEM

CPU_ID_PREFIX = "vcpu-"
BLOCK_MIB = 2  # virtio-mem's block on x86 and arm64 with 4 KiB pages
POLL = 0.05
MAX_SLOTS = 4096


class Qmp(Protocol):
    async def execute(self, command: str, args: dict[str, object] | None = None) -> object: ...


def _slots(reply: object) -> list[Mapping[str, object]]:
    if not isinstance(reply, list) or len(reply) > MAX_SLOTS:
        raise HypervisorError(f"QMP query-hotpluggable-cpus returned {str(reply)[:200]}")
    slots = [s for s in reply if isinstance(s, Mapping) and isinstance(s.get("props"), Mapping)]
    return sorted(slots, key=lambda s: _order(s["props"]))


def _order(props: Mapping[str, object]) -> tuple[int, ...]:
    keys = ("node-id", "socket-id", "die-id", "cluster-id", "core-id", "thread-id")
    return tuple(v if isinstance(v := props.get(k), int) else 0 for k in keys)


def _cpu_id(props: Mapping[str, object]) -> str:
    return CPU_ID_PREFIX + "-".join(str(v) for v in _order(props))


async def _plugged(qmp: Qmp) -> tuple[list[Mapping[str, object]], list[Mapping[str, object]]]:
    """(plugged, free) CPU slots, each in topology order."""
    slots = _slots(await qmp.execute("query-hotpluggable-cpus"))
    plugged = [s for s in slots if isinstance(s.get("qom-path"), str)]
    return plugged, [s for s in slots if not isinstance(s.get("qom-path"), str)]


async def set_vcpus(qmp: Qmp, wanted: int, timeout: float, unplug: bool = True) -> int:
    """Plug or (if ``unplug``) unplug vCPUs towards ``wanted``; the number plugged once QEMU
    agrees (or when ``timeout`` passed: a guest may refuse to let a vCPU go)."""
    plugged, free = await _plugged(qmp)
    if not unplug:
        wanted = max(wanted, len(plugged))
    if wanted > len(plugged):
        for slot in free[: wanted - len(plugged)]:
            props = dict(slot["props"])  # type: ignore[call-overload]
            await qmp.execute("device_add", {"driver": str(slot.get("type")),
                                             "id": _cpu_id(props), **props})  # fmt: skip
    elif wanted < len(plugged):
        ours = [s for s in plugged if f"/{CPU_ID_PREFIX}" in str(s.get("qom-path"))]
        for slot in list(reversed(ours))[: len(plugged) - wanted]:
            await qmp.execute("device_del", {"id": str(slot["qom-path"]).rsplit("/", 1)[-1]})
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        count = len((await _plugged(qmp))[0])
        if count == wanted or asyncio.get_running_loop().time() > deadline:
            return count
        await asyncio.sleep(POLL)


async def plugged_memory(qmp: Qmp) -> int:
    """MiB the guest has plugged from the virtio-mem device."""
    size = await qmp.execute("qom-get", {"path": f"/machine/peripheral/{VIRTIO_MEM}",
                                         "property": "size"})  # fmt: skip
    if not isinstance(size, int) or size < 0:
        raise HypervisorError(f"virtio-mem size is {size!r}")
    return size >> 20


async def set_memory(qmp: Qmp, mib: int, timeout: float) -> int:
    """Ask the guest to plug (or give back) virtio-mem memory until ``mib`` (rounded up to the
    block) is plugged; the MiB plugged once it is (or when ``timeout`` passed)."""
    mib = -(-mib // BLOCK_MIB) * BLOCK_MIB
    await qmp.execute("qom-set", {"path": f"/machine/peripheral/{VIRTIO_MEM}",
                                  "property": "requested-size", "value": mib << 20})  # fmt: skip
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        plugged = await plugged_memory(qmp)
        if plugged == mib or asyncio.get_running_loop().time() > deadline:
            return plugged
        await asyncio.sleep(POLL)
