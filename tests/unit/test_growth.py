"""A pod's VM grows and shrinks with its containers' limits (runtime core against the fake
VM and agent), and the QEMU side of a resize against a scripted QMP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from test_core import Boots, make_bundle, run

from runvm import config as cfg
from runvm.errors import ConfigError
from runvm.hypervisor.fake import FakeVM
from runvm.hypervisor.qemu import resize
from runvm.hypervisor.qemu.machines import machine_capabilities
from runvm.runtime.machine import room
from runvm.runtime.pod import Pod
from runvm.runtime.sizing import Size

GIB = 1 << 30


@pytest.fixture
def boots(tmp_path: Path) -> Boots:
    (tmp_path / "run").mkdir()
    return Boots(tmp_path / "run")


def limited(path: Path, memory: int = 0, quota: int = 0) -> Path:
    bundle = make_bundle(path)
    spec = json.loads((bundle / "config.json").read_text())
    resources: dict[str, Any] = {}
    if memory:
        resources["memory"] = {"limit": memory}
    if quota:
        resources["cpu"] = {"quota": quota, "period": 100_000}
    spec["linux"]["resources"] = resources
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def pod_with_caps(boots: Boots, vcpus: int = 8, memory_mib: int = 8192) -> Pod:
    hv = cfg.HypervisorConfig(max_vcpus=vcpus, max_memory_mib=memory_mib)
    return Pod("pod", cfg.RunvmConfig(hypervisor=hv), place=False, start_sandbox=boots)


def vm_of(boots: Boots) -> FakeVM:
    vm = boots.booted[-1].vm
    assert isinstance(vm, FakeVM)
    return vm


def test_a_second_container_grows_the_vm_and_its_delete_gives_it_back(
    boots: Boots, tmp_path: Path
) -> None:
    async def body() -> None:
        pod = pod_with_caps(boots)
        await pod.create("pause", make_bundle(tmp_path / "p"), stdin=False)
        assert vm_of(boots).size == (1, 256)
        await pod.create("app", limited(tmp_path / "a", GIB // 2, 100_000), stdin=False)
        assert vm_of(boots).size == (2, 768) and boots.agent.cpus_online == 2
        assert boots.booted[0].size == Size(2, 768)
        await pod.delete("app")
        assert vm_of(boots).size == (1, 256)
        assert boots.booted[0].size == Size(1, 256)

    run(body)


def test_a_limit_past_the_cap_is_refused_with_its_numbers_and_changes_nothing(
    boots: Boots, tmp_path: Path
) -> None:
    async def body() -> None:
        pod = pod_with_caps(boots, memory_mib=1024)
        await pod.create("pause", make_bundle(tmp_path / "p"), stdin=False)
        with pytest.raises(ConfigError, match=r"asks for 2048 MiB.*2304 MiB, over the cap of 1024"):
            await pod.create("app", limited(tmp_path / "a", 2 * GIB), stdin=False)
        assert vm_of(boots).size == (1, 256) and "app" not in pod.containers

    run(body)


def test_a_failed_create_gives_back_what_it_grew(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        pod = pod_with_caps(boots)
        await pod.create("pause", make_bundle(tmp_path / "p"), stdin=False)
        boots.agent.fail["CreateContainer"] = ConfigError("refused by the guest")
        with pytest.raises(ConfigError, match="refused by the guest"):
            await pod.create("app", limited(tmp_path / "a", GIB, 200_000), stdin=False)
        assert vm_of(boots).size == (1, 256)
        assert [e for e in vm_of(boots).events if e.startswith("resize")][-1] == "resize 1 256"

    run(body)


def test_update_grows_before_the_cgroup_and_shrinks_after(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        pod = pod_with_caps(boots)
        await pod.create("c", limited(tmp_path / "c", 256 << 20), stdin=False)
        vm = vm_of(boots)
        assert vm.size == (1, 512)  # a lone container is sized at boot
        boots.agent.calls.clear()
        await pod.update("c", json.dumps({"memory": {"limit": 768 << 20}}).encode())
        assert vm.size == (1, 1024)
        assert vm.events[-1] == "resize 1 1024" and boots.agent.calls[-1] == "UpdateContainer"
        await pod.update("c", json.dumps({"memory": {"limit": 256 << 20}}).encode())
        assert vm.size == (1, 512) and vm.events[-1] == "resize 1 512"
        await pod.update("c", json.dumps({"cpu": {"quota": 300_000}}).encode())  # memory kept
        assert vm.size == (4, 512) and pod.resources["c"]["memory"]["limit"] == 256 << 20

    run(body)


def test_an_update_below_what_the_container_uses_is_refused(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        pod = pod_with_caps(boots)
        await pod.create("c", limited(tmp_path / "c", 512 << 20), stdin=False)
        boots.agent.memory_current = 300 << 20
        boots.agent.calls.clear()
        with pytest.raises(ConfigError, match=r"limit 209715200 is below the 314572800 bytes"):
            await pod.update("c", json.dumps({"memory": {"limit": 200 << 20}}).encode())
        assert "UpdateContainer" not in boots.agent.calls and vm_of(boots).size == (1, 768)

    run(body)


def test_a_machine_without_hotplug_shares_its_vm_and_refuses_more_naming_the_fix(
    boots: Boots, tmp_path: Path
) -> None:
    """Limits that fit in the VM share it; a container or an update asking for more than the
    whole VM is refused, and nothing changes."""

    async def body() -> None:
        pod = pod_with_caps(boots)
        await pod.create("pause", make_bundle(tmp_path / "p"), stdin=False)
        boots.booted[0].growth = machine_capabilities("microvm")
        boots.booted[0].machine = "microvm"
        with pytest.raises(
            ConfigError, match=r"machine microvm cannot hot-plug memory.*hypervisor"
        ):
            await pod.create("big", limited(tmp_path / "b", GIB), stdin=False)
        assert "big" not in pod.containers
        await pod.create("app", limited(tmp_path / "a", 96 << 20), stdin=False)
        await pod.update("app", json.dumps({"memory": {"limit": 128 << 20}}).encode())
        assert "UpdateContainer" in boots.agent.calls and vm_of(boots).size == (1, 256)
        with pytest.raises(ConfigError, match=r"cannot hot-plug"):
            await pod.update("app", json.dumps({"memory": {"limit": 300 << 20}}).encode())
        await pod.delete("app")
        assert vm_of(boots).size == (1, 256)

    run(body)


def test_room_is_up_to_the_caps_and_none_on_microvm() -> None:
    config = cfg.RunvmConfig(hypervisor=cfg.HypervisorConfig(max_vcpus=4, max_memory_mib=1000))
    assert room(config, "pc", Size(1, 256)) == (4, 768)  # 744 rounded up to the 128 MiB block
    assert room(config, "q35", Size(6, 2000)) == (6, 0)
    assert room(config, "microvm", Size(1, 256)) == (0, 0)
    assert room(config, "virt", Size(1, 256)) == (4, 768)  # vCPUs onlined, virtio-mem


def test_an_arm64_guest_runs_on_virt_whatever_x86_machine_is_configured() -> None:
    from runvm.runtime.machine import machine_for

    for machine in ("pc", "q35", "microvm"):
        tables = {"hypervisor": {"arch": "arm64", "machine": machine}}
        assert machine_for(cfg.parse(tables), needs_hotplug=True) == "virt"
        assert (
            machine_for(cfg.parse({"hypervisor": {"arch": "amd64", "machine": machine}})) == machine
        )


class ScriptedQmp:
    """QEMU's side of vCPU and virtio-mem hot-plug, as QMP shows it."""

    def __init__(self, slots: int, keep_mib: int = 0) -> None:
        self.plugged = {0: "/machine/unattached/device[0]"}
        self.slots = slots
        self.keep_mib = keep_mib
        self.requested = 0
        self.calls: list[str] = []

    async def execute(self, command: str, args: dict[str, object] | None = None) -> object:
        args = args or {}
        self.calls.append(command)
        if command == "query-hotpluggable-cpus":
            out: list[dict[str, object]] = []
            for core in range(self.slots):
                slot: dict[str, object] = {"type": "max-x86_64-cpu", "vcpus-count": 1,
                                           "props": {"socket-id": 0, "core-id": core,
                                                     "thread-id": 0}}  # fmt: skip
                if core in self.plugged:
                    slot["qom-path"] = self.plugged[core]
                out.append(slot)
            return out[::-1]  # QEMU lists the last slot first
        if command == "device_add":
            new = args["core-id"]
            assert isinstance(new, int) and new not in self.plugged
            self.plugged[new] = f"/machine/peripheral/{args['id']}"
        elif command == "device_del":
            gone = next(c for c, p in self.plugged.items() if p.endswith(f"/{args['id']}"))
            del self.plugged[gone]
        elif command == "qom-set":
            value = args["value"]
            assert isinstance(value, int)
            self.requested = value
        elif command == "qom-get":
            return max(self.requested, self.keep_mib << 20)
        return {}


def test_qemu_vcpus_are_added_in_free_slots_and_only_added_ones_go() -> None:
    async def body() -> None:
        qmp = ScriptedQmp(slots=4)
        assert await resize.set_vcpus(qmp, 3, 1.0) == 3
        assert sorted(qmp.plugged) == [0, 1, 2]
        assert qmp.plugged[2] == "/machine/peripheral/vcpu-0-0-0-0-2-0"
        assert await resize.set_vcpus(qmp, 9, 0.1) == 4  # no more slots
        assert await resize.set_vcpus(qmp, 2, 0.1, unplug=False) == 4  # TCG: none leaves
        assert await resize.set_vcpus(qmp, 0, 0.1) == 1  # the boot vCPU stays
        assert list(qmp.plugged) == [0]

    asyncio.run(body())


def test_qemu_memory_is_requested_in_blocks_and_what_the_guest_keeps_is_reported() -> None:
    async def body() -> None:
        qmp = ScriptedQmp(slots=1, keep_mib=64)
        assert await resize.set_memory(qmp, 511, 1.0) == 512
        assert qmp.requested == 512 << 20
        assert await resize.set_memory(qmp, 0, 0.2) == 64  # the guest could not free it all

    asyncio.run(body())


def test_the_agent_onlines_lowest_first_and_offlines_highest_first(tmp_path: Path) -> None:
    from runvm.agent import cpus

    for n in range(4):
        (tmp_path / f"cpu{n}").mkdir()
        if n:
            (tmp_path / f"cpu{n}" / "online").write_text("0")
    (tmp_path / "cpufreq").mkdir()

    def sync() -> None:  # what the kernel's list shows after the switches
        on = [n for n in range(4) if n == 0 or (tmp_path / f"cpu{n}/online").read_text() == "1"]
        (tmp_path / "online").write_text(",".join(map(str, on)))

    sync()
    assert cpus.online_count(tmp_path) == 1
    cpus.online_some(3, tmp_path)
    sync()
    assert (tmp_path / "online").read_text() == "0,1,2"
    cpus.online_some(2, tmp_path)
    sync()
    assert (tmp_path / "online").read_text() == "0,1"
    (tmp_path / "online").write_text("0-2,5")
    assert cpus.online_count(tmp_path) == 4


def test_a_failed_update_gives_back_what_it_grew(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        pod = pod_with_caps(boots)
        await pod.create("c", limited(tmp_path / "c", 256 << 20), stdin=False)
        boots.agent.fail["UpdateContainer"] = ConfigError("refused by the guest")
        with pytest.raises(ConfigError, match="refused by the guest"):
            await pod.update("c", json.dumps({"memory": {"limit": 768 << 20}}).encode())
        assert vm_of(boots).size == (1, 512) and pod.wants["c"] == Size(0, 256)

    run(body)
