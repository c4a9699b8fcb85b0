"""Agent entry point: the PID 1 recipe, then serve the host link until power-off.

Any exception escaping :func:`main` ends PID 1, which panics the guest kernel; with
``panic=-1`` and QEMU's ``-no-reboot`` that ends the VM, so a broken agent never lingers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from runvm.agent import channel, faults, network, service, sysinit
from runvm.agent.reaper import Reaper
from runvm.ttrpc import Server

log = logging.getLogger("runvm.agent")

MAX_CONCURRENT = 2048


async def serve(params: dict[str, str]) -> None:
    loop = asyncio.get_running_loop()
    reaper = Reaper()
    reaper.install(loop)
    state = service.AgentState()
    # Long polls (stdio reads, waits, port-forward reads) each hold a slot while they wait.
    server = Server(max_concurrent=MAX_CONCURRENT)
    service.register(server, state, reaper)
    background = []  # referenced for as long as the agent serves
    if params.get("test_faults") == "1":
        background.append(asyncio.ensure_future(faults.watch()))
    if params.get("preload") == "network":  # a template's or the cache's VM: pods with NICs
        network.preload()  # come later, on its clones or its takers
    if params.get("channel") == "vsock":
        state.serving_boottime = time.clock_gettime(time.CLOCK_BOOTTIME)
        await channel.serve_vsock(server)
    else:
        port = channel.find_port(params.get("port", "runvm.agent"))
        log.info("agent %s serving on %s", state.instance_id, port)
        state.serving_boottime = time.clock_gettime(time.CLOCK_BOOTTIME)
        await channel.serve_virtio_serial(server, port)


def main() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="runvm-agent: %(levelname)s %(message)s"
    )
    if os.getpid() == 1:
        sysinit.run()
    params = sysinit.kernel_params() if os.path.exists("/proc/cmdline") else {}
    if params.get("debug"):
        logging.getLogger().setLevel(logging.DEBUG)
    asyncio.run(serve(params))
