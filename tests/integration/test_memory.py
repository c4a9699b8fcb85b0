"""Guest RAM on the host (real QEMU): what a cold guest frees goes back (free page reporting);
it is shared with virtiofsd only when virtio-fs needs it, else private (mergeable by KSM)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from runvm import config as cfg
from runvm.image.busybox import make_bundle
from runvm.runtime.container import Container
from runvm.runtime.sandbox import Sandbox, SandboxOptions

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

MIB = 1 << 20
FILL_MIB = 60  # under the default 64 MiB /dev/shm of a container


def guest_ram(pid: int, boot_mib: int = 256) -> tuple[int, set[str]]:
    """Resident bytes and permissions of QEMU's mappings of the guest's boot RAM (the memfd
    backend of ``boot_mib``; not the hot-pluggable virtio-mem one, always shared)."""
    rss, in_ram, perms = 0, False, set()
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first, *rest = line.split()
        if not first.endswith(":"):
            start, _, end = first.partition("-")
            size = int(end, 16) - int(start, 16)
            in_ram = "memory-backend-memfd" in line and size <= boot_mib * MIB
            if in_ram:
                perms.add(rest[0])
        elif in_ram and first == "Rss:":
            rss += int(rest[0]) * 1024
    return rss, perms


@pytest.mark.parametrize(("shared_fs", "mapping"), [("virtio-fs", "rw-s"), ("9p", "rw-p")])
def test_freed_guest_memory_is_released(
    runvm_config: cfg.RunvmConfig, tmp_path: Path, shared_fs: cfg.SharedFs, mapping: str
) -> None:
    storage = dataclasses.replace(runvm_config.storage, shared_fs=shared_fs)
    runvm_config = dataclasses.replace(runvm_config, storage=storage)
    script = (f"head -c {FILL_MIB}m /dev/zero > /dev/shm/fill && sleep 4 && rm /dev/shm/fill; "
              "tail -f /dev/null")  # fmt: skip
    make_bundle(tmp_path, ["sh", "-c", script])

    async def scenario() -> tuple[int, int, int]:
        sandbox = await Sandbox.start("fpr1", runvm_config, SandboxOptions(hostname="fpr1"))
        try:
            assert sandbox.vm is not None
            pid = sandbox.vm.pid
            before, perms = guest_ram(pid, runvm_config.hypervisor.memory_mib)
            assert perms == {mapping}, perms
            container = await Container.create(sandbox, "fpr1", tmp_path, stdin=False)
            await container.start()
            peak = low = before
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                now = guest_ram(pid, runvm_config.hypervisor.memory_mib)[0]
                peak = max(peak, now)
                if peak - before > (FILL_MIB - 10) * MIB:
                    low = min(low if low != before else now, now)
                    if peak - low > (FILL_MIB - 20) * MIB:
                        break
                await asyncio.sleep(0.25)
            return before, peak, low
        finally:
            await sandbox.stop()

    before, peak, low = asyncio.run(scenario())
    print(f"guest RAM resident: {before / MIB:.0f} MiB, filled {peak / MIB:.0f}, "
          f"freed {low / MIB:.0f}")  # fmt: skip
    assert peak - before > (FILL_MIB - 10) * MIB, "the guest's writes never reached its RAM"
    assert peak - low > (FILL_MIB - 20) * MIB, "the freed pages stayed resident on the host"
