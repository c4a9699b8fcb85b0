"""The runtime's side of the VM cache: the key a sandbox's VM must have been made with, and
the pooled boot the cache daemon runs (the cache itself never imports the runtime;
``runvm cache serve`` hands it a :class:`PooledBoot`).

A pooled VM is a cold boot with nothing shared or plugged, a virtio-serial channel and a
QEMU that does not die with the daemon; it stops before ``CreateSandbox``. Its taker
adopts it (``origin.Adopted``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runvm.config import RunvmConfig
from runvm.hypervisor.accel import detect
from runvm.hypervisor.qemu.driver import QemuHypervisor
from runvm.runtime.guestimage import resolve_guest_files
from runvm.runtime.sandbox import Sandbox, SandboxOptions, sandbox_run_dir
from runvm.runtime.template import cache_key


class PooledBoot:
    """How the cache daemon's VMs are made, for ``config``."""

    def __init__(self, config: RunvmConfig) -> None:
        self.config = config

    def run_dir(self, vm_id: str) -> Path:
        return sandbox_run_dir(self.config, vm_id)

    async def key(self) -> dict[str, Any]:
        files = resolve_guest_files(self.config)
        hypervisor = QemuHypervisor.for_config(self.config)
        qemu = hypervisor.resolve_binary()
        cache_dir = Path(self.config.runtime.cache_dir)
        accel = await detect(self.config.hypervisor.accelerator, qemu, files.kernel, cache_dir,
                             hypervisor.arch)  # fmt: skip
        return cache_key(self.config, files, accel.accel.value, qemu)

    async def boot(self, vm_id: str) -> Sandbox:
        return await Sandbox.start(vm_id, self.config, SandboxOptions(pooled=True))
