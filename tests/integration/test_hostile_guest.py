"""A hostile agent inside a real VM, on the real virtio-serial channel (real QEMU).

The guest's /init is tests/integration/hostile_init.py: it passes the version handshake,
then attacks. The host must fail the sandbox with a clear error in bounded time, stop that
VM, leave nothing behind, and a healthy sandbox running alongside must not notice.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from guestvariant import variant

from runvm import config as cfg
from runvm.errors import AgentError
from runvm.runtime.guestimage import GuestFiles
from runvm.runtime.sandbox import Sandbox, SandboxOptions
from runvm.ttrpc import client as ttrpc_client

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

HOSTILE_INIT = (Path(__file__).parent / "hostile_init.py").read_bytes()
STALL = 3.0  # the host's frame stall limit in this test, seconds
ATTACK_BOUND = 20.0  # seconds from the attack (after the handshake) to the host's error

# mode -> a word the host's error must contain
MODES = {
    "garbage": "unknown message type",
    "oversized": "exceeds maximum message size",
    "truncated": "stalled",
    "drip": "stalled",
    "wrong-stream": "no request outstanding",
    "unasked": "no request outstanding",
}


def hostile(tmp_path: Path, mode: str) -> GuestFiles:
    files = {"/init": b"#!/usr/bin/python3.11 -IS\n" + HOSTILE_INIT,
             "/etc/runvm/hostile": mode.encode()}  # fmt: skip
    (tmp_path / mode).mkdir()
    return variant(tmp_path / mode, files)


async def attacks(config: cfg.RunvmConfig, tmp_path: Path) -> dict[str, str]:
    """Run every mode next to a healthy sandbox; return the problems found, per mode."""
    problems: dict[str, str] = {}
    healthy = await Sandbox.start("healthy", config, SandboxOptions(share_fs=False))
    try:
        for mode, word in MODES.items():
            options = SandboxOptions(share_fs=False, guest_files=hostile(tmp_path, mode))
            started = time.monotonic()
            try:
                sandbox = await Sandbox.start(f"hostile-{mode}", config, options)
            except AgentError as exc:
                took = time.monotonic() - started
                print(f"{mode}: cut off after {took:.1f} s: {str(exc).splitlines()[0]}")
                if word not in str(exc):
                    problems[mode] = f"error without {word!r}: {exc}"
                elif took > config.hypervisor.boot_timeout + ATTACK_BOUND:
                    problems[mode] = f"took {took:.0f} s"
            else:
                await sandbox.stop()
                problems[mode] = "the sandbox started"
            await healthy.agent.check(timeout=10)  # type: ignore[union-attr]
        problems.update(await late_attack(config, tmp_path))
        await healthy.agent.check(timeout=10)  # type: ignore[union-attr]
        details = await healthy.agent.guest_details()  # type: ignore[union-attr]
        assert details.kernel_release
    finally:
        await healthy.stop()
    return problems


async def late_attack(config: cfg.RunvmConfig, tmp_path: Path) -> dict[str, str]:
    """The agent turns hostile after the sandbox is up: the host stops that VM by itself."""
    options = SandboxOptions(share_fs=False, guest_files=hostile(tmp_path, "late"))
    sandbox = await Sandbox.start("hostile-late", config, options)
    try:
        assert sandbox.vm is not None
        await asyncio.wait_for(sandbox.vm.wait(), ATTACK_BOUND)
        if "agent link broke" not in sandbox.failure:
            return {"late": f"failure not recorded: {sandbox.failure!r}"}
        return {}
    except TimeoutError:
        return {"late": "the VM still runs after its agent sent garbage"}
    finally:
        await sandbox.stop()


def test_hostile_agents_are_cut_off_and_others_unaffected(
    runvm_config: cfg.RunvmConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ttrpc_client, "FRAME_TIMEOUT", STALL)
    problems = asyncio.run(attacks(runvm_config, tmp_path))
    assert not problems, problems
