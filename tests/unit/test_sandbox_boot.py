"""A sandbox's boot recipes on the fake hypervisor and the fake agent, without root or QEMU:
the named steps in order for each origin, rollback when any step fails, and stop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from runvm import config as cfg
from runvm.errors import AgentError, AgentTimeout, ConfigError, HypervisorError, RpcError
from runvm.hypervisor.accel import AccelReport
from runvm.hypervisor.base import Accel, AgentChannelSpec
from runvm.hypervisor.fake import FakeHypervisor
from runvm.protocol.client import AgentClient
from runvm.protocol.fake import FakeAgent
from runvm.runtime import template
from runvm.runtime.guestimage import GuestFiles
from runvm.runtime.lifecycle import SandboxState
from runvm.runtime.machine import machine_for
from runvm.runtime.origin import Parts
from runvm.runtime.sandbox import Sandbox, SandboxOptions
from runvm.storage.shared import SharedDir
from runvm.ttrpc import Code


class Fakes:
    def __init__(self, tmp: Path) -> None:
        self.hv = FakeHypervisor()
        self.agent = FakeAgent()
        self.connect_error: Exception | None = None
        self.agent.on_destroy = lambda: self.hv.vms[-1].exit(0)
        self.config = cfg.RunvmConfig(
            runtime=cfg.RuntimeConfig(state_root=str(tmp / "state"), cache_dir=str(tmp)),
            cache=cfg.CacheConfig(enable=False),
            factory=cfg.FactoryConfig(dir=str(tmp / "factory")),
        )
        (tmp / "vmlinuz").write_bytes(b"k")
        (tmp / "initrd.img").write_bytes(b"i")
        files = GuestFiles(tmp / "vmlinuz", tmp / "initrd.img")
        self.options = SandboxOptions(share_fs=False, hostname="h", guest_files=files)

        async def detect(
            wanted: str, binary: str, kernel: Path, cache: Path, arch: str
        ) -> AccelReport:
            return AccelReport(Accel.TCG, "absent", "no KVM here")

        async def connect(
            channel: AgentChannelSpec, boot: float, timeout: float,
            exited: Callable[[], Awaitable[int]],
        ) -> AgentClient:  # fmt: skip
            if self.connect_error is not None:
                raise self.connect_error
            return cast(AgentClient, self.agent)

        self.parts = Parts(hypervisor=lambda c: self.hv, detect=detect, connect=connect)

    async def start(self) -> Sandbox:
        return await Sandbox.start("sb1", self.config, self.options, self.parts)


def state_of(sandbox: Sandbox) -> SandboxState:
    """(read afresh: a call changes it)"""
    return sandbox.state


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


COLD = ["accelerator", "run-dir", "qemu-start", "agent-ready", "guest-details",
        "create-sandbox"]  # fmt: skip


def test_cold_boot_runs_its_steps_in_order_and_stop_undoes_them(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path)

    async def body() -> None:
        sandbox = await fakes.start()
        assert list(sandbox.timings) == COLD and sandbox.state is SandboxState.READY
        vm = fakes.hv.vms[0]
        assert vm.spec.machine == "pc" and not vm.spec.incoming
        assert fakes.agent.sandbox is not None and fakes.agent.sandbox.hostname == "h"
        assert sandbox.run_dir.is_dir() and sandbox.details is not None
        await sandbox.stop()
        assert "DestroySandbox" in fakes.agent.calls and vm.returncode == 0
        assert not sandbox.run_dir.exists() and fakes.agent.conn.closed.is_set()
        assert state_of(sandbox) is SandboxState.STOPPED
        await sandbox.stop()  # idempotent

    run(body)


FAILURES: dict[str, Callable[[Fakes], None]] = {
    "qemu-start": lambda f: setattr(f.hv, "fail_launch", HypervisorError("QEMU refused")),
    "agent-ready": lambda f: setattr(f, "connect_error", AgentTimeout("no answer")),
    "guest-details": lambda f: f.agent.fail.update(GuestDetails=AgentError("garbage")),
    "create-sandbox": lambda f: f.agent.fail.update(
        CreateSandbox=RpcError(Code.INVALID_ARGUMENT, "bad storage")),
}  # fmt: skip


@pytest.mark.parametrize("step", list(FAILURES))
def test_a_failing_step_undoes_every_step_before_it(tmp_path: Path, step: str) -> None:
    fakes = Fakes(tmp_path)
    FAILURES[step](fakes)

    async def body() -> None:
        with pytest.raises((HypervisorError, AgentError, RpcError)):
            await fakes.start()

    run(body)
    run_dir = tmp_path / "state" / "sandboxes" / "sb1"
    assert not run_dir.exists(), list(run_dir.iterdir())
    assert all(vm.returncode is not None for vm in fakes.hv.vms)  # every VM stopped
    if COLD.index(step) > COLD.index("agent-ready"):
        assert fakes.agent.conn.closed.is_set()


def test_a_vm_that_dies_fails_its_sandbox_and_says_why(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path)

    async def body() -> None:
        sandbox = await fakes.start()
        fakes.hv.vms[0].exit(-9)
        for _ in range(100):
            if sandbox.state is SandboxState.FAILED:
                break
            await asyncio.sleep(0.01)
        assert sandbox.state is SandboxState.FAILED
        assert sandbox.failure.startswith("QEMU exited"), sandbox.failure
        await sandbox.stop()
        assert state_of(sandbox) is SandboxState.STOPPED and not sandbox.run_dir.exists()

    run(body)


def test_a_sandbox_that_does_not_fit_its_pod_is_refused_before_booting(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path)
    fakes.options.memory_limit = 64 << 20

    async def body() -> None:
        with pytest.raises(ConfigError, match="below what its VM needs"):
            await fakes.start()

    run(body)
    assert fakes.hv.vms == [] and not (tmp_path / "state" / "sandboxes" / "sb1").exists()


CLONE = ["accelerator", "run-dir", "qemu-start", "restore", "agent-ready", "resume-clone",
         "create-sandbox"]  # fmt: skip


def test_a_clone_of_a_usable_template_restores_and_takes_a_new_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = Fakes(tmp_path)
    fakes.config = cfg.RunvmConfig(
        runtime=fakes.config.runtime, cache=fakes.config.cache,
        factory=cfg.FactoryConfig(enable=True, dir=str(tmp_path / "factory")),
    )  # fmt: skip
    tpl_dir = tmp_path / "factory" / "tpl"
    tpl_dir.mkdir(parents=True)
    (tpl_dir / "state").write_bytes(b"saved")
    tpl = template.Template(tpl_dir, {"made": "for this config"})

    async def usable(*_: Any) -> template.Template:
        return tpl

    monkeypatch.setattr(template, "usable", usable)
    # Clones share over 9p; the shared directory's mounts (root's) are left out here.
    monkeypatch.setattr(SharedDir, "setup", lambda self: self.path.mkdir())
    monkeypatch.setattr(SharedDir, "teardown", lambda self: self.path.rmdir())
    fakes.options.share_fs = True

    async def body() -> None:
        sandbox = await fakes.start()
        assert list(sandbox.timings) == CLONE
        vm = fakes.hv.vms[0]
        assert vm.spec.incoming and vm.spec.memory_path == tpl.memory
        assert any(e.startswith("load_state") for e in vm.events)
        assert sandbox.templated and fakes.agent.instance_id != "0" * 32
        assert fakes.agent.sandbox is not None
        assert [s.driver for s in fakes.agent.sandbox.storages] == ["9p"]
        await sandbox.stop()

    run(body)


def test_hotplug_machine_is_a_choice_not_a_correction() -> None:
    micro = cfg.RunvmConfig(hypervisor=cfg.HypervisorConfig(machine="microvm"))
    assert machine_for(micro, needs_hotplug=False) == "microvm"
    assert machine_for(micro, needs_hotplug=True) == "pc"
    refusing = cfg.RunvmConfig(hypervisor=cfg.HypervisorConfig(machine="microvm",
                                                               hotplug_machine=""))  # fmt: skip
    with pytest.raises(ConfigError, match="hotplug_machine"):
        machine_for(refusing, needs_hotplug=True)
    assert json.dumps(cfg.HypervisorConfig().hotplug_machine) == '"pc"'
