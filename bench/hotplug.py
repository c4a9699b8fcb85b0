"""Hot-plug speed: growing a running VM by 1 vCPU and 1 GiB, against booting one that size.

For each of ``--runs`` rounds (default 5), on one sandbox of the base size: the time from the
host's resize call until the guest has the vCPU online and 1 GiB more in MemTotal (the
runtime's own path: runtime/growth.resize, QMP device_add and virtio-mem, the agent's
OnlineCPUs), then the time to give both back. The baseline, measured in the same run, is the
cold start of a sandbox booted at the final size (QEMU start to agent ready, as a pod's
first container's create would see it). Medians are printed with their ratio.

Usage (root, after scripts/install): python3 bench/hotplug.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

from runvm import config as cfg
from runvm.runtime import growth, sizing
from runvm.runtime.sandbox import Sandbox, SandboxOptions
from runvm.runtime.sizing import Size

GROWTH = Size(1, 1024)


async def memory_total(sandbox: Sandbox) -> int:
    assert sandbox.agent is not None
    return (await sandbox.agent.guest_details()).mem_total_bytes


async def hotplug(config: cfg.RunvmConfig, runs: int) -> tuple[list[float], list[float]]:
    """(grow times, shrink times) on one base-size sandbox."""
    grow, shrink = [], []
    sandbox = await Sandbox.start("hp-bench", config, SandboxOptions(hostname="hp"))
    try:
        base = sandbox.size
        for _ in range(runs):
            before = await memory_total(sandbox)
            t0 = time.monotonic()
            size = await growth.resize(sandbox, base + GROWTH, "bench grow")
            while await memory_total(sandbox) < before + (1000 << 20):  # usable in the guest
                await asyncio.sleep(0.01)
            grow.append(time.monotonic() - t0)
            assert size == base + GROWTH, size
            t0 = time.monotonic()
            await growth.resize(sandbox, base, "bench shrink")
            shrink.append(time.monotonic() - t0)
    finally:
        await sandbox.stop()
    return grow, shrink


async def cold(config: cfg.RunvmConfig, size: Size, name: str) -> float:
    t0 = time.monotonic()
    sandbox = await Sandbox.start(name, config, SandboxOptions(hostname=name, size=size))
    elapsed = time.monotonic() - t0
    await sandbox.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rvb-hp-") as tmp:
        runtime = {"state_root": f"{tmp}/state", "cache_dir": f"{tmp}/c"}
        config = cfg.parse({"runtime": runtime})
        final = sizing.base(config) + GROWTH
        boots = [asyncio.run(cold(config, final, f"hp-cold{i}")) for i in range(args.runs)]
        grow, shrink = asyncio.run(hotplug(config, args.runs))
    boot_s, grow_s = statistics.median(boots), statistics.median(grow)
    print(f"medians of {args.runs}; base {sizing.base(config)}, final {final}")
    print(f"{'cold start of a VM of the final size':44}{boot_s:8.3f} s   1.00")
    print(f"{'hot-plug 1 vCPU + 1 GiB (to usable)':44}{grow_s:8.3f} s   {grow_s / boot_s:.2f}")
    print(f"{'give both back':44}{statistics.median(shrink):8.3f} s")


if __name__ == "__main__":
    main()
