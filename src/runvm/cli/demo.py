"""`runvm demo`: boot a VM and show what its agent reports (proof it is a separate kernel)."""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from typing import Any

from runvm import config as cfg
from runvm.runtime.sandbox import Sandbox


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="boot a VM and show what its agent reports")
    p.set_defaults(func=run)


async def _demo(config: cfg.RunvmConfig) -> None:
    sandbox = await Sandbox.start(f"demo-{uuid.uuid4().hex[:8]}", config)
    try:
        d = sandbox.details
        assert d is not None and sandbox.accel is not None
        print(f"accelerator:      {sandbox.accel.sentence()}")
        print(f"host kernel:      {os.uname().release}")
        print(f"guest kernel:     {d.kernel_release}")
        print(f"guest memory:     {d.mem_total_bytes // (1 << 20)} MiB, {d.cpus} vCPU")
        print(f"agent:            {d.agent_version}, instance {d.instance_id}")
        print("boot timings:     " + ", ".join(f"{k} {v:.2f}s" for k, v in sandbox.timings.items()))
    finally:
        await sandbox.stop()


def run(args: argparse.Namespace) -> int:
    asyncio.run(_demo(cfg.load(args.config)))
    return 0
