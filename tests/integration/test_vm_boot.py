"""Boot a real VM from the built guest image and talk to its agent (real QEMU)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from guestvariant import variant

from runvm import arch as arches
from runvm import config as cfg
from runvm import image
from runvm.errors import AgentError, AgentTimeout, VersionMismatch
from runvm.hypervisor.base import AgentChannelSpec, socket_dir
from runvm.protocol import PROTOCOL_VERSION
from runvm.protocol import agent_pb2 as pb
from runvm.runtime.agentlink import connect_agent
from runvm.runtime.sandbox import Sandbox, SandboxOptions

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def with_timeout(config: cfg.RunvmConfig, seconds: float) -> cfg.RunvmConfig:
    return dataclasses.replace(
        config, hypervisor=dataclasses.replace(config.hypervisor, boot_timeout=seconds)
    )


@pytest.mark.smoke
def test_boot_agent_answers_and_poweroff(runvm_config: cfg.RunvmConfig) -> None:
    arch = arches.resolve(runvm_config.hypervisor.arch).name
    info = image.current(variant=runvm_config.image.variant, arch=arch)

    async def scenario() -> dict[str, Any]:
        started = time.monotonic()
        sandbox = await Sandbox.start("boot1", runvm_config, SandboxOptions(share_fs=False))
        ready = time.monotonic() - started
        try:
            agent = sandbox.agent
            assert agent is not None and sandbox.vm is not None
            health = await agent.check()
            version = await agent.handshake()
            details = await agent.guest_details()
            # 100 concurrent requests on one channel, all answered and matched.
            replies = await asyncio.gather(
                *(agent.guest_details() if i % 2 else agent.check() for i in range(100))
            )
            pid = sandbox.vm.pid
        finally:
            await sandbox.stop()
        return dict(health=health, version=version, details=details, replies=replies,
                    pid=pid, ready=ready, sandbox=sandbox)  # fmt: skip

    r = run(scenario)
    assert r["health"].status == pb.HealthCheckResponse.SERVING
    assert r["version"].protocol == PROTOCOL_VERSION
    details = r["details"]
    assert details.kernel_release == info.kernel_release
    assert details.kernel_release != os.uname().release
    assert details.mem_total_bytes > 128 << 20 and details.cpus == 1
    assert len(details.instance_id) == 32
    assert len(r["replies"]) == 100
    assert all(x.instance_id == details.instance_id for x in r["replies"][1::2])
    assert all(x.status == pb.HealthCheckResponse.SERVING for x in r["replies"][::2])
    # Powered off through the agent: QEMU is gone and so is the run directory.
    with pytest.raises(ProcessLookupError):
        os.kill(r["pid"], 0)
    assert not r["sandbox"].run_dir.exists()
    print(f"QEMU start -> agent ready: {r['ready']:.2f} s; steps {r['sandbox'].timings}")


def test_host_sessions_follow_each_other_without_a_lost_request(
    runvm_config: cfg.RunvmConfig,
) -> None:
    """The guest agent keeps its port open across host sessions: a host that connects right
    after another hung up (even with a request in flight) is answered at once, every time."""
    if runvm_config.agent.channel == "vsock":
        pytest.skip("about virtio-serial sessions")

    async def scenario() -> tuple[list[float], str]:
        sandbox = await Sandbox.start("sessions1", runvm_config, SandboxOptions(share_fs=False))
        try:
            assert sandbox.agent is not None and sandbox.vm is not None
            instance = (await sandbox.agent.guest_details()).instance_id
            assert sandbox._watcher is not None
            sandbox._watcher.cancel()  # this test hangs up on purpose: no stop on a closed link
            await sandbox.agent.close()
            path = socket_dir(sandbox.run_dir, runvm_config.hypervisor.user) / "agent.sock"
            channel = AgentChannelSpec(kind="virtio-serial", socket_path=path)
            vm = sandbox.vm
            answered = []
            for i in range(16):
                started = time.monotonic()
                agent = await connect_agent(channel, 10, 10, vm.wait)
                details = await agent.guest_details()
                answered.append(time.monotonic() - started)
                assert details.instance_id == instance
                late = asyncio.ensure_future(agent.guest_details()) if i % 2 else None
                await asyncio.sleep(0)  # odd rounds hang up with a request in flight
                await agent.close()
                if late is not None:
                    late.cancel()
                    with contextlib.suppress(BaseException):
                        await late
            sandbox.agent = await connect_agent(channel, 10, 10, vm.wait)
        finally:
            await sandbox.stop()
        return answered, instance

    answered, _ = run(scenario)
    assert len(answered) == 16 and max(answered) < 10
    print(f"16 sessions, answer after connect: max {max(answered):.3f} s, "
          f"mean {sum(answered) / 16:.3f} s")  # fmt: skip


def test_qmp_quit_stops_the_vm(runvm_config: cfg.RunvmConfig) -> None:
    async def scenario() -> tuple[int, int | None]:
        sandbox = await Sandbox.start("quit1", runvm_config, SandboxOptions(share_fs=False))
        assert sandbox.vm is not None
        pid = sandbox.vm.pid
        await sandbox.vm.stop()  # QMP quit
        code = sandbox.vm.returncode
        await sandbox.stop()
        return pid, code

    pid, code = run(scenario)
    assert code == 0  # QEMU ended by `quit`, not by a signal
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_mismatched_agent_version_is_refused(runvm_config: cfg.RunvmConfig, tmp_path: Path) -> None:
    files = variant(
        tmp_path, {"/usr/lib/runvm/runvm/protocol/version.py": b"PROTOCOL_VERSION = 999\n"}
    )
    options = SandboxOptions(share_fs=False, guest_files=files)
    with pytest.raises(VersionMismatch) as err:
        run(lambda: Sandbox.start("mismatch1", runvm_config, options))
    assert "speaks protocol 999" in str(err.value)


def test_silent_agent_times_out_and_leaves_nothing(
    runvm_config: cfg.RunvmConfig, tmp_path: Path
) -> None:
    silent = b"#!/usr/bin/python3.11 -IS\nimport time\nprint('silent agent')\ntime.sleep(3600)\n"
    files = variant(tmp_path, {"/init": silent})
    options = SandboxOptions(share_fs=False, guest_files=files)
    started = time.monotonic()
    with pytest.raises(AgentTimeout) as err:
        run(lambda: Sandbox.start("silent1", with_timeout(runvm_config, 12), options))
    assert time.monotonic() - started < 30
    assert str(err.value).startswith("sandbox silent1: the agent did not answer within 12 s")
    assert "silent agent" in str(err.value)  # the guest console tail is part of the error


def test_crashing_agent_ends_the_vm(runvm_config: cfg.RunvmConfig, tmp_path: Path) -> None:
    crash = b"#!/usr/bin/python3.11 -IS\nraise SystemExit('agent crashed on purpose')\n"
    files = variant(tmp_path, {"/init": crash})
    options = SandboxOptions(share_fs=False, guest_files=files)
    started = time.monotonic()
    with pytest.raises(AgentError) as err:
        run(lambda: Sandbox.start("crash1", runvm_config, options))
    assert not isinstance(err.value, AgentTimeout)
    # PID 1 exits -> kernel panic -> QEMU exits (-no-reboot): no waiting for the deadline.
    assert time.monotonic() - started < runvm_config.hypervisor.boot_timeout / 2
    # PID 1's exit is a kernel panic, said with the kernel's reason and the agent's last words
    assert str(err.value).startswith("sandbox crash1: the guest kernel panicked: Attempted to "
                                     "kill init!"), err.value  # fmt: skip
    assert "agent crashed on purpose" in str(err.value)
