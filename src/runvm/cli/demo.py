"""`runvm demo`: run a busybox container in its own VM and show the proof.

The bundle is built from Debian's busybox-static of the chosen architecture (nothing is
pulled). The container prints what it sees (kernel, machine, hostname, PID, processes);
runvm adds what the agent reports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from runvm import arch as arches
from runvm import config as cfg
from runvm.image.busybox import make_bundle
from runvm.runtime import guestarch
from runvm.runtime.container import Container
from runvm.runtime.iorelay import pump_output
from runvm.runtime.sandbox import Sandbox, SandboxOptions

SCRIPT = (
    "echo 'hello from a busybox container in its own VM'; "
    'echo "  kernel seen inside:  $(uname -r) $(uname -m)"; '
    'echo "  hostname:            $(hostname)"; '
    'echo "  my pid:              $$"; '
    'echo "  processes visible:  " /proc/[0-9]*'
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a busybox container in a VM and show the proof")
    p.add_argument("--arch", choices=tuple(arches.ARCHES),
                   help="the container's architecture, and so its VM's (default: the "
                   "config's hypervisor.arch, auto: the host's)")  # fmt: skip
    p.set_defaults(func=run)


async def _demo(config: cfg.RunvmConfig, bundle: Path) -> int:
    cid = f"demo-{uuid.uuid4().hex[:8]}"
    sandbox = await Sandbox.start(cid, config, SandboxOptions(hostname=cid))
    try:
        container = await Container.create(sandbox, cid, bundle, stdin=False)
        try:
            agent = sandbox.agent
            assert agent is not None
            out = asyncio.ensure_future(pump_output(agent, cid, "", "stdout", 1))
            await container.start()
            status = (await agent.wait_process(cid)).status
            await out
        finally:
            await container.remove()
        d = sandbox.details
        assert d is not None and sandbox.accel is not None
        print(f"  host kernel:         {os.uname().release}")
        print(f"  guest agent:         {d.agent_version}, instance {d.instance_id}")
        print(f"  guest memory:        {d.mem_total_bytes // (1 << 20)} MiB, {d.cpus} vCPU")
        print(f"  accelerator:         {sandbox.accel.sentence()}")
        steps = ", ".join(f"{k} {v:.2f}s" for k, v in sandbox.timings.items() if v >= 0.01)
        print(f"  boot steps:          {steps}")
        return status
    finally:
        await sandbox.stop()


def run(args: argparse.Namespace) -> int:
    config = cfg.load(args.config)
    arch = arches.get(args.arch) if args.arch else arches.resolve(config.hypervisor.arch)
    with tempfile.TemporaryDirectory(prefix="runvm-demo-") as tmp:
        make_bundle(Path(tmp), ["sh", "-c", SCRIPT], arch=arch.name)
        return asyncio.run(_demo(guestarch.for_arch(config, arch), Path(tmp)))
