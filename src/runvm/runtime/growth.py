"""Resizing a running sandbox's VM: vCPUs and memory hot-plugged or given back, vCPUs
onlined by the agent (hot-plugged memory onlines itself, movable, so it can be taken back).

A VM cannot go below its boot size, nor past the room its machine left at boot
(runtime/machine.room): :func:`resize` returns the size the VM actually has afterwards.
What a machine cannot grow (its capabilities say: nothing on microvm) keeps its boot size: a
container whose own limits fit in that VM shares it (logged), one that asks for more than the
whole VM is a ConfigError naming the fix.
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


def _reachable(sandbox: Sandbox, size: Size) -> Size:
    """``size`` in what the machine can change; its boot size in what it cannot."""
    can, have = sandbox.growth, sandbox.size
    return Size(size.vcpus if can.grow_vcpus else have.vcpus,
                size.memory_mib if can.grow_memory else have.memory_mib)  # fmt: skip


async def resize(sandbox: Sandbox, size: Size, what: str, need: Size | None = None) -> Size:
    """Take ``sandbox``'s VM towards ``size`` for ``what`` (e.g. "create container c"), of
    which ``need`` (all of ``size`` if None) is what that one container asks for itself."""
    vm, agent, have = sandbox.vm, sandbox.agent, sandbox.size
    if size == have or vm is None or agent is None:
        return have
    target = _reachable(sandbox, size)
    own = size if need is None else need
    stuck = [kind for kind, want, got in (("vCPUs", own.vcpus, target.vcpus),
                                          ("memory", own.memory_mib, target.memory_mib))
             if want > got]  # fmt: skip
    if stuck:
        fix = 'use hypervisor.machine = "pc" or "q35", or ' if sandbox.machine == "microvm" else ""
        raise ConfigError(f"{what}: the VM would grow from {have} to {size}, but machine "
                          f"{sandbox.machine} cannot hot-plug {' or '.join(stuck)}: {fix}give "
                          "its limits to the pod's first container (the VM boots at its "
                          "size)")  # fmt: skip
    if target != size and _exceeds(size, target):
        log.warning("%s: machine %s cannot grow its VM of %s to %s; the containers "
                    "share it", what, sandbox.machine, have, size)  # fmt: skip
    if target == have:
        return have
    growing = _exceeds(target, have)
    started = time.monotonic()
    vcpus, memory = await vm.resize(target.vcpus, target.memory_mib, RESIZE_TIMEOUT)
    if target.vcpus != have.vcpus:  # (a VM that kept surplus vCPUs has the guest offline them)
        vcpus = (await agent.online_cpus(min(vcpus, target.vcpus), RESIZE_TIMEOUT)).cpus_online
    sandbox.size = Size(vcpus, memory)
    log.info("%s: VM of %s resized from %s to %s (asked %s) in %.2f s", what, sandbox.id,
             have, sandbox.size, size, time.monotonic() - started)  # fmt: skip
    if growing and (vcpus < target.vcpus or memory < target.memory_mib):
        raise ConfigError(
            f"{what}: the VM grew only to {sandbox.size} of the {target} asked "
            "(past the room it booted with, or the guest did not take it)"
        )
    return sandbox.size
