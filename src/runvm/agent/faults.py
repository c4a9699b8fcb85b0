"""Test-only fault injection; armed only by ``runvm.test_faults=1`` on the kernel command line.

Armed, the agent exits as soon as a file named :data:`TRIGGER` appears at the top of any
container's shared rootfs. PID 1 ending panics the guest kernel and QEMU exits: this is how
tests crash the agent at a chosen moment of a container's life. Unarmed, nothing runs.
"""

from __future__ import annotations

import asyncio
import logging
import os

from runvm.agent.containers import SHARED_ROOT

log = logging.getLogger("runvm.agent")

TRIGGER = ".runvm-test-agent-exit"
POLL = 0.2


async def watch(shared_root: str = SHARED_ROOT) -> None:
    """Poll for the trigger file and exit the agent at once when it appears."""
    log.warning("test fault injection is armed")
    while True:
        await asyncio.sleep(POLL)
        try:
            names = os.listdir(shared_root)
        except OSError:
            continue
        for name in names:
            if os.path.lexists(os.path.join(shared_root, name, "rootfs", TRIGGER)):
                log.error("test fault: the agent exits now")
                os._exit(3)
