"""The runtime core without root or QEMU: the lifecycle table, a Pod's containers and
processes on a fake sandbox and the fake agent, hook placement, rollback, and the event order
the shim derives from them."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from runvm import config as cfg
from runvm.errors import ConfigError, ExistsError, NotFoundError, RpcError, StateError
from runvm.hypervisor.base import Accel, VMSpec
from runvm.hypervisor.fake import FakeVM
from runvm.hypervisor.qemu.machines import machine_capabilities
from runvm.oci.default import default_spec
from runvm.protocol.client import AgentClient
from runvm.protocol.fake import FakeAgent
from runvm.runtime import lifecycle
from runvm.runtime.container import Container
from runvm.runtime.lifecycle import State
from runvm.runtime.pod import Pod
from runvm.runtime.proc import Process
from runvm.runtime.sandbox import Sandbox, SandboxOptions
from runvm.runtime.sizing import Size
from runvm.shim import shim_api_pb2 as spb
from runvm.shim.service import TaskService
from runvm.ttrpc import Code

GUEST = "/run/runvm/shared"


class FakeShared:
    """The shared directory's bookkeeping, without mounts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.removed: list[str] = []

    def guest_path(self, host_path: Path) -> str:
        return f"{GUEST}/{host_path.relative_to(self.path)}"

    def add_rootfs(self, container_id: str, rootfs: Path, readonly: bool = False) -> Path:
        return self.path / container_id / "rootfs"

    def add_bind(self, container_id: str, index: int, source: Path, *_: Any) -> Path:
        return self.path / container_id / "mounts" / str(index)

    def remove_container(self, container_id: str) -> None:
        self.removed.append(container_id)


class FakeSandbox:
    """What the core uses of a Sandbox: its agent, share, run directory and stop."""

    def __init__(self, run_dir: Path, options: SandboxOptions) -> None:
        self.id = "pod"
        self.options = options
        self.agent = FakeAgent()
        self.shared = FakeShared(run_dir / "shared")
        self.run_dir = run_dir
        self.size = options.size or Size(1, 256)
        spec = VMSpec(name="pod", run_dir=run_dir, kernel=run_dir, initrd=run_dir,
                      accel=Accel.TCG, vcpus=self.size.vcpus, memory_mib=self.size.memory_mib,
                      max_vcpus=8, hotplug_memory_mib=4096)  # fmt: skip
        self.vm = FakeVM(spec)
        self.hotplug_blk = False
        self.machine = "pc"
        self.growth = machine_capabilities("pc")
        self.failure = ""
        self.network = None
        self.details = None
        self.accel = None
        self.timings: dict[str, float] = {}
        self.stopped = False
        self.on_network_change: Callable[[], None] = lambda: None

    async def stop(self) -> None:
        self.stopped = True

    async def sync_network(self) -> None:
        pass


class Boots:
    """A start_sandbox that boots FakeSandboxes and remembers them."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.booted: list[FakeSandbox] = []

    async def __call__(self, pod_id: str, config: cfg.RunvmConfig, o: SandboxOptions) -> Sandbox:
        sandbox = FakeSandbox(self.run_dir, o)
        self.booted.append(sandbox)
        return cast(Sandbox, sandbox)

    @property
    def agent(self) -> FakeAgent:
        return self.booted[-1].agent


def make_bundle(path: Path, hooks_to: Path | None = None) -> Path:
    """A bundle; with ``hooks_to`` every hook kind appends "<kind> <status>" there."""
    (path / "rootfs").mkdir(parents=True)
    spec = default_spec()
    spec["process"]["args"] = ["true"]
    if hooks_to is not None:
        script = path / "hook.sh"
        script.write_text('#!/bin/sh\nread -r state\nstatus=$(echo "$state" | '
                          "sed 's/.*\"status\": *\"\\([a-z]*\\)\".*/\\1/')\n"
                          f'echo "$1 $status" >> {hooks_to}\n')  # fmt: skip
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        kinds = ("prestart", "createRuntime", "createContainer", "startContainer",
                 "poststart", "poststop")  # fmt: skip
        spec["hooks"] = {k: [{"path": str(script), "args": ["hook", k]}] for k in kinds}
    (path / "config.json").write_text(json.dumps(spec))
    return path


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


@pytest.fixture
def boots(tmp_path: Path) -> Boots:
    (tmp_path / "run").mkdir()
    return Boots(tmp_path / "run")


def pod_of(boots: Boots) -> Pod:
    return Pod("pod", cfg.RunvmConfig(), place=False, start_sandbox=boots)


# --- the lifecycle table ----------------------------------------------------------------------
def test_operations_refuse_states_they_do_not_accept_and_name_both() -> None:
    lifecycle.require("start", State.CREATED, "container c")
    with pytest.raises(StateError) as refused:
        lifecycle.require("start", State.RUNNING, "container c")
    assert str(refused.value) == (
        "cannot start container c: not allowed in state 'running' (needs created)"
    )
    assert lifecycle.advance(State.CREATED, State.RUNNING, "c") is State.RUNNING
    with pytest.raises(StateError, match="c cannot become running"):
        lifecycle.advance(State.STOPPED, State.RUNNING, "c")
    for frm, to in lifecycle.TRANSITIONS:  # every listed change is allowed, nothing else
        assert lifecycle.advance(frm, to, "c") is to
    assert (State.STOPPED, State.CREATED) not in lifecycle.TRANSITIONS


# --- a pod's containers and processes ---------------------------------------------------------
def test_container_runs_exits_and_is_deleted_with_its_vm(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        pod = pod_of(boots)
        exits: list[tuple[str, int, State]] = []

        async def on_exit(container: Container, process: Process) -> None:
            exits.append((container.id, process.exit_status, process.state))

        pod.on_exit = on_exit
        container = await pod.create("c1", make_bundle(tmp_path / "b"), stdin=False)
        agent = boots.agent
        assert container.state is State.CREATED and agent.calls[:1] == ["CreateContainer"]
        await container.start()
        with pytest.raises(StateError, match=r"cannot delete container c1.*running"):
            await pod.delete("c1")
        agent.exit("c1", status=3)
        assert await container.process.wait() == 3
        assert exits == [("c1", 3, State.RUNNING)]  # reported before it is "stopped"
        assert container.process.state is State.STOPPED
        with pytest.raises(NotFoundError, match="already finished"):
            await pod.kill("c1", "", signal.SIGTERM)
        await pod.delete("c1")  # answers before its VM has stopped
        assert pod.sandbox is None and pod.containers == {}
        await pod.stopped()
        assert boots.booted[0].stopped
        assert boots.booted[0].shared.removed == ["c1"]

    run(body)


def test_second_container_joins_the_first_and_shares_the_vm(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        pod = pod_of(boots)
        first = await pod.create("s", make_bundle(tmp_path / "s"), stdin=False)
        bundle = make_bundle(tmp_path / "c")  # CRI names the first task's namespaces
        spec = json.loads((bundle / "config.json").read_text())
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "ipc":
                ns["path"] = f"/proc/{pod.vm_pid}/ns/ipc"
        (bundle / "config.json").write_text(json.dumps(spec))
        second = await pod.create("c", bundle, stdin=False, boots=False)
        assert len(boots.booted) == 1
        guest = boots.agent.containers["c"].spec
        paths = {n["type"]: n.get("path") for n in guest["linux"]["namespaces"]}  # type: ignore[index]
        assert paths["ipc"] == f"/proc/{first.guest_pid}/ns/ipc", guest
        assert second.guest_pid != first.guest_pid
        with pytest.raises(ExistsError):
            await pod.create("c", make_bundle(tmp_path / "c2"), stdin=False)
        await pod.delete("c")  # created, never started: killed first
        assert "SignalProcess" in boots.agent.calls and not boots.booted[0].stopped
        await pod.delete("s")
        await pod.stopped()
        assert boots.booted[0].stopped

    run(body)


def test_a_pod_container_without_its_sandbox_is_refused(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        with pytest.raises(StateError, match="create container c in pod pod"):
            await pod_of(boots).create("c", make_bundle(tmp_path / "c"), stdin=False, boots=False)
        assert boots.booted == []

    run(body)


def test_a_failed_create_stops_the_vm_it_booted(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        pod = pod_of(boots)
        pod.start_sandbox = boots

        async def failing(pod_id: str, config: cfg.RunvmConfig, o: SandboxOptions) -> Sandbox:
            sandbox = await boots(pod_id, config, o)
            boots.agent.fail["CreateContainer"] = RpcError(Code.INVALID_ARGUMENT, "bad spec")
            return sandbox

        pod.start_sandbox = failing
        with pytest.raises(RpcError, match="bad spec"):
            await pod.create("c", make_bundle(tmp_path / "c"), stdin=False)
        assert boots.booted[0].stopped and pod.sandbox is None and pod.containers == {}
        assert boots.booted[0].shared.removed == ["c"]

    run(body)


def test_pause_resume_update_and_exec_are_guarded(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        pod = pod_of(boots)
        container = await pod.create("c", make_bundle(tmp_path / "c"), stdin=False)
        with pytest.raises(StateError, match="cannot pause container c"):
            await container.pause()  # created, not running
        await container.start()
        await container.pause()
        assert container.state is State.PAUSED
        with pytest.raises(StateError, match="cannot exec container c"):
            container.add_exec("e1", b'{"args": ["true"], "cwd": "/"}', stdin=False)
        with pytest.raises(StateError, match="cannot pause"):
            await container.pause()
        await container.resume()
        await container.update(b'{"memory": {"limit": 1048576}}')
        assert boots.agent.containers["c"].resources == b'{"memory": {"limit": 1048576}}'
        with pytest.raises(ConfigError, match="not JSON"):
            await container.update(b"{")
        stats = await container.stats()
        assert stats.memory_current == 4096

    run(body)


def test_execs_have_their_own_lifecycle(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        pod = pod_of(boots)
        container = await pod.create("c", make_bundle(tmp_path / "c"), stdin=False)
        await container.start()
        proc = container.add_exec("e1", b'{"args": ["sleep", "9"], "cwd": "/"}', stdin=False)
        with pytest.raises(ExistsError):
            container.add_exec("e1", b'{"args": ["true"], "cwd": "/"}', stdin=False)
        with pytest.raises(ConfigError, match="exec id is empty"):
            container.add_exec("", b'{"args": ["true"], "cwd": "/"}', stdin=False)
        with pytest.raises(StateError, match="signal process e1 of c"):
            await pod.kill("c", "e1", signal.SIGTERM)
        await proc.start_exec()
        ended: list[str] = []

        async def on_exit(process: Process) -> None:
            ended.append(process.exec_id)

        proc.watch(on_exit)
        await pod.kill("c", "e1", signal.SIGTERM)
        assert await proc.wait() == 128 + signal.SIGTERM and ended == ["e1"]
        await pod.delete_exec("c", "e1")
        with pytest.raises(NotFoundError):
            container.proc("e1")
        container.add_exec("e2", b'{"args": ["true"], "cwd": "/"}', stdin=False)
        await pod.delete_exec("c", "e2")  # never started: may go too
        assert container.execs == {}

    run(body)


def test_hooks_run_where_the_spec_places_them(boots: Boots, tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"

    async def body() -> None:
        pod = pod_of(boots)
        container = await pod.create("c", make_bundle(tmp_path / "c", log), stdin=False)
        agent = boots.agent
        real_start = agent.start_container

        async def start(container_id: str) -> int:
            with log.open("a") as f:
                f.write("user-program started\n")
            return await real_start(container_id)

        agent.start_container = start  # type: ignore[method-assign]
        await container.start()
        agent.exit("c")
        await container.process.wait()
        _, warnings = await pod.delete("c")
        assert warnings == []

    run(body)
    assert log.read_text().splitlines() == [
        "prestart creating", "createRuntime creating", "createContainer creating",
        "startContainer created", "user-program started", "poststart running",
        "poststop stopped",
    ]  # fmt: skip


def test_an_oom_kill_is_reported_before_the_exit_it_caused(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        pod = pod_of(boots)
        seen: list[str] = []
        pod.on_oom = lambda c: seen.append(f"oom {c.id}")

        async def on_exit(container: Container, process: Process) -> None:
            seen.append(f"exit {container.id} {process.exit_status}")

        pod.on_exit = on_exit
        container = await pod.create("c", make_bundle(tmp_path / "c"), stdin=False)
        await container.start()
        boots.agent.containers["c"].oom_kills = 1
        boots.agent.exit("c", status=137)
        await container.process.wait()
        assert seen == ["oom c", "exit c 137"]

    run(body)


def test_processes_of_a_failed_vm_are_already_finished(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        pod = pod_of(boots)
        container = await pod.create("c", make_bundle(tmp_path / "c"), stdin=False)
        await container.start()
        boots.booted[0].failure = "QEMU exited (killed by SIGKILL): the VM is gone"
        boots.agent.exit("c", status=255)
        with pytest.raises(NotFoundError, match=r"already finished.*QEMU exited"):
            await pod.kill("c", "", signal.SIGKILL, all_processes=True)

    run(body)


# --- the shim's event order -------------------------------------------------------------------
class Events:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def publish(self, event: Any) -> None:
        self.seen.append(type(event).__name__)


def test_shim_events_follow_containerds_order(boots: Boots, tmp_path: Path) -> None:
    async def body() -> None:
        events = Events()
        service = TaskService("pod", "ns", cfg.RunvmConfig(), events)  # type: ignore[arg-type]
        service.pod = pod = Pod("pod", cfg.RunvmConfig(), place=False, start_sandbox=boots)
        pod.on_exit = service._exited
        bundle = make_bundle(tmp_path / "c")
        await service.create(spb.CreateTaskRequest(id="c", bundle=str(bundle)))
        await service.start(spb.StartRequest(id="c"))
        state = await service.state(spb.StateRequest(id="c"))
        assert state.status == spb.RUNNING
        process = json.dumps({"args": ["true"], "cwd": "/"}).encode()
        await service.exec(spb.ExecProcessRequest(id="c", exec_id="e", spec={"value": process}))
        await service.start(spb.StartRequest(id="c", exec_id="e"))
        boots.agent.exit("c", "e", 0)
        await service.wait(spb.WaitRequest(id="c", exec_id="e"))
        await service.delete(spb.DeleteRequest(id="c", exec_id="e"))
        await service.kill(spb.KillRequest(id="c", signal=signal.SIGKILL))
        waited = await service.wait(spb.WaitRequest(id="c"))
        assert waited.exit_status == 128 + signal.SIGKILL and waited.HasField("exited_at")
        await service.delete(spb.DeleteRequest(id="c"))
        with pytest.raises(NotFoundError):
            await service.state(spb.StateRequest(id="c"))

        assert events.seen == ["TaskCreate", "TaskStart", "TaskExecAdded", "TaskExecStarted",
                               "TaskExit", "TaskExit", "TaskDelete"]  # fmt: skip

    run(body)


def test_fake_agent_stands_where_the_client_does() -> None:
    """The core types its agent as AgentClient; the fake offers every call the core makes."""
    used = {"create_container", "start_container", "remove_container", "exec_process",
            "signal_process", "wait_process", "read_stream", "write_stdin", "close_stdin",
            "tty_win_resize", "list_processes", "pause_container", "resume_container",
            "update_container", "stats_container", "wait_oom"}  # fmt: skip
    for name in used:
        assert callable(getattr(FakeAgent, name)) and callable(getattr(AgentClient, name)), name
