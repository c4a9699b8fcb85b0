"""QEMU driver edges (real QEMU): failed launch, KVM path, vsock channel, runvm check."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runvm import config as cfg
from runvm import image
from runvm.errors import LaunchError
from runvm.hypervisor.accel import kvm_device, probe_kvm
from runvm.hypervisor.base import Accel, VMSpec
from runvm.hypervisor.qemu.driver import QemuHypervisor
from runvm.runtime.sandbox import Sandbox, SandboxOptions

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]


def test_failed_launch_carries_argv_exit_code_and_log(tmp_path: Path) -> None:
    info = image.current()
    spec = VMSpec(
        name="bad", run_dir=tmp_path, kernel=Path(info.kernel), initrd=Path(info.initrd),
        accel=Accel.TCG, machine="no-such-machine",
    )  # fmt: skip
    with pytest.raises(LaunchError) as err:
        asyncio.run(QemuHypervisor().launch(spec))
    assert err.value.exitcode == 1
    assert "-machine" in err.value.argv and "no-such-machine,memory-backend=mem" in err.value.argv
    assert "unsupported machine type" in err.value.log_tail  # QEMU's own complaint
    assert not list(tmp_path.glob("*.sock"))


def test_kvm_guest_boots_where_kvm_is_usable(
    runvm_config: cfg.RunvmConfig, tmp_path: Path, hardware_skip: Any
) -> None:
    ok, reason = kvm_device()
    if not ok:
        hardware_skip("KVM", reason)
    usable, why = asyncio.run(
        probe_kvm("qemu-system-x86_64", Path(image.current().kernel), tmp_path)
    )
    if not usable:
        hardware_skip("KVM", f"/dev/kvm present but unusable: {why}")
    conf = dataclasses.replace(
        runvm_config, hypervisor=dataclasses.replace(runvm_config.hypervisor, accelerator="kvm")
    )

    async def boot() -> str:
        sandbox = await Sandbox.start("kvm1", conf, SandboxOptions(share_fs=False))
        try:
            assert sandbox.accel is not None and sandbox.accel.accel is Accel.KVM
            return (await sandbox.agent.guest_details()).kernel_release  # type: ignore[union-attr]
        finally:
            await sandbox.stop()

    assert asyncio.run(boot()) == image.current().kernel_release


def test_vsock_agent_channel(runvm_config: cfg.RunvmConfig, hardware_skip: Any) -> None:
    if not os.path.exists("/dev/vhost-vsock"):
        hardware_skip("vhost-vsock", "/dev/vhost-vsock does not exist on this host")
    conf = dataclasses.replace(
        runvm_config, agent=dataclasses.replace(runvm_config.agent, channel="vsock")
    )

    async def boot() -> int:
        sandbox = await Sandbox.start("vsock1", conf, SandboxOptions(share_fs=False))
        try:
            return (await sandbox.agent.check()).status  # type: ignore[union-attr]
        finally:
            await sandbox.stop()

    assert asyncio.run(boot()) == 1


def _check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runvm.cli.main", "check", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_runvm_check_reports_this_host(tmp_path: Path, accel_cache: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'[runtime]\ncache_dir = "{accel_cache}"\n')
    env = {**os.environ, "RUNVM_CONFIG": str(conf)}
    r = _check(env, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and report["accelerator"]["accel"] in ("kvm", "tcg")
    assert "QEMU emulator version" in report["qemu"]["version"]
    assert report["agent_channel"] in ("virtio-serial", "vsock")
    text = _check(env)
    assert text.returncode == 0 and text.stdout.startswith("accelerator:")


def test_runvm_check_says_what_to_install(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[hypervisor]\npath = "/nonexistent/qemu"\n')
    r = _check({**os.environ, "RUNVM_CONFIG": str(conf)})
    assert r.returncode == 1
    assert (
        "runvm cannot run: QEMU is missing: install the Debian package qemu-system-x86" in r.stdout
    )
