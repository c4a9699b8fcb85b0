"""Resizing a running sandbox's VM: vCPUs and memory hot-plugged or given back, vCPUs
onlined by the agent (hot-plugged memory onlines itself, movable, so it can be taken back).

A VM cannot go below its boot size, nor past the room its machine left at boot
(runtime/machine.room): :func:`resize` returns the size the VM actually has afterwards.
A machine that cannot hot-plug (microvm) keeps its boot size: a container whose own limits
fit in that VM shares it (logged), one that asks for more than the whole VM is a ConfigError
naming the fix.
"""

from __future__ import annotations

import logging
import time

from runvm.errors import ConfigError
from runvm.runtime.sandbox import Sandbox
from runvm.runtime.sizing import Size

log = logging.getLogger(__name__)

RESIZE_TIMEOUT = 20.0


def _exceeds(size: Size, have: Size) -> bool:
    return size.vcpus > have.vcpus or size.memory_mib > have.memory_mib


async def resize(sandbox: Sandbox, size: Size, what: str, need: Size | None = None) -> Size:
    """Take ``sandbox``'s VM towards ``size`` for ``what`` (e.g. "create container c"), of
    which ``need`` (all of ``size`` if None) is what that one container asks for itself."""
    vm, agent, have = sandbox.vm, sandbox.agent, sandbox.size
    if size == have or vm is None or agent is None:
        return have
    growing = _exceeds(size, have)
    if not sandbox.resizable:
        if _exceeds(size if need is None else need, have):
            raise ConfigError(f"{what}: the VM would grow from {have} to {size}, but machine "
                              f"{sandbox.machine} cannot hot-plug vCPUs or memory: use "
                              'hypervisor.machine = "pc" or "q35", or give its limits to the '
                              "pod's first container")  # fmt: skip
        if growing:
            log.warning("%s: machine %s cannot grow its VM of %s to %s; the containers "
                        "share it", what, sandbox.machine, have, size)  # fmt: skip
        return have
    started = time.monotonic()
    vcpus, memory = await vm.resize(size.vcpus, size.memory_mib, RESIZE_TIMEOUT)
    if size.vcpus != have.vcpus:  # (a VM that kept surplus vCPUs has the guest offline them)
        vcpus = (await agent.online_cpus(min(vcpus, size.vcpus), RESIZE_TIMEOUT)).cpus_online
    sandbox.size = Size(vcpus, memory)
    log.info("%s: VM of %s resized from %s to %s (asked %s) in %.2f s", what, sandbox.id,
             have, sandbox.size, size, time.monotonic() - started)  # fmt: skip
    if growing and (vcpus < size.vcpus or memory < size.memory_mib):
        raise ConfigError(
            f"{what}: the VM grew only to {sandbox.size} of the {size} asked "
            "(past the room it booted with, or the guest did not take it)"
        )
    return sandbox.size
