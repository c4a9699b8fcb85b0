"""A fake hypervisor for unit tests of the runtime core: :class:`FakeHypervisor` launches
:class:`FakeVM`\\ s, which do what the core relies on of a VM, in memory and without QEMU.

What it does as a VM does: it runs until stopped, terminated or :meth:`FakeVM.exit`; then
:meth:`~FakeVM.wait` returns its status and ``returncode`` is set. Devices come and go by
their ids: a second device with a taken id, or the removal of one that is not there, is a
HypervisorError, as QEMU refuses them. ``events`` records what was done, in order; ``fail``
maps a method name to the error it raises next.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from runvm.errors import HypervisorError, RunvmError
from runvm.hypervisor.base import Accel, DiskSpec, NetSpec, VirtioFsSpec, VMSpec
from runvm.process import ForeignProcess

_pids = itertools.count(40000)


class FakeVM:
    def __init__(self, spec: VMSpec, pid: int = 0) -> None:
        self.spec = spec
        self._pid = pid or next(_pids)
        self.returncode: int | None = None
        self.devices: dict[str, object] = {d.id: d for d in spec.devices if hasattr(d, "id")}
        self.events: list[str] = []
        self.fail: dict[str, RunvmError] = {}
        self.detached = False
        self.size = (spec.vcpus, spec.memory_mib)
        self.keep_mib = 0  # memory the guest "cannot give back" on a shrink
        self.console = "fake console\n"  # what its guest "printed"
        self._exited = asyncio.Event()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def accel(self) -> Accel:
        return self.spec.accel

    def console_tail(self) -> str:
        return self.console

    def stderr_tail(self) -> str:
        return ""

    def exit(self, status: int = 0) -> None:
        """The VM ends by itself (its guest powered off, or QEMU died)."""
        if self.returncode is None:
            self.returncode = status
            self.events.append(f"exit {status}")
        self._exited.set()

    def _do(self, what: str) -> None:
        self.events.append(what)
        failure = self.fail.pop(what.split()[0], None)
        if failure is not None:
            raise failure

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    async def stop(self) -> None:
        if self.returncode is None and not self.detached:
            self._do("stop")
            self.exit(0)

    async def terminate(self) -> None:
        self._do("terminate")
        self.exit(-15)

    async def detach(self) -> None:
        self._do("detach")
        self.detached = True

    def _add(self, device_id: str, device: object) -> None:
        if device_id in self.devices:
            raise HypervisorError(f"duplicate device id {device_id}")
        self.devices[device_id] = device

    def _remove(self, device_id: str) -> None:
        if self.devices.pop(device_id, None) is None:
            raise HypervisorError(f"device {device_id} not found")

    async def hotplug_nic(self, nic: NetSpec) -> None:
        self._do(f"hotplug_nic {nic.id}")
        self._add(nic.id, nic)

    async def unplug_nic(self, nic_id: str, timeout: float = 10.0) -> None:
        self._do(f"unplug_nic {nic_id}")
        self._remove(nic_id)

    async def hotplug_disk(self, disk: DiskSpec) -> None:
        self._do(f"hotplug_disk {disk.id}")
        self._add(disk.id, disk)

    async def unplug_disk(self, disk_id: str, timeout: float = 10.0) -> None:
        self._do(f"unplug_disk {disk_id}")
        self._remove(disk_id)

    async def hotplug_fs(self, share: VirtioFsSpec, share_id: str = "fs-hp") -> None:
        self._do(f"hotplug_fs {share_id}")
        self._add(share_id, share)

    async def resize(self, vcpus: int, memory_mib: int, timeout: float = 0) -> tuple[int, int]:
        """As QEMU does: within the boot size and the spec's room."""
        self._do(f"resize {vcpus} {memory_mib}")
        spec = self.spec
        cpus = min(max(vcpus, spec.vcpus), max(spec.max_vcpus, spec.vcpus))
        room = spec.hotplug_memory_mib
        memory = spec.memory_mib + min(max(memory_mib - spec.memory_mib, self.keep_mib, 0), room)
        self.size = (cpus, memory)
        return self.size

    async def save_state(self, path: Path, timeout: float = 0) -> None:
        self._do(f"save_state {path}")
        path.write_bytes(b"fake state")

    async def load_state(self, path: Path, timeout: float = 0) -> None:
        self._do(f"load_state {path}")
        if not path.exists():
            raise HypervisorError(f"no saved state at {path}")


class FakeHypervisor:
    """Launches FakeVMs; ``fail_launch`` makes the next launch fail."""

    def __init__(self) -> None:
        self.vms: list[FakeVM] = []
        self.fail_launch: RunvmError | None = None

    def resolve_binary(self) -> str:
        return "/usr/bin/true"

    async def launch(self, spec: VMSpec) -> FakeVM:
        if self.fail_launch is not None:
            failure, self.fail_launch = self.fail_launch, None
            raise failure
        vm = FakeVM(spec)
        self.vms.append(vm)
        return vm

    async def adopt(self, spec: VMSpec, process: ForeignProcess) -> FakeVM:
        vm = FakeVM(spec, process.pid)
        self.vms.append(vm)
        return vm
