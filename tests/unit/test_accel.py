from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runvm.errors import ConfigError, HypervisorError
from runvm.hypervisor.accel import decide, kvm_device
from runvm.hypervisor.base import Accel


def test_kvm_used_when_a_guest_runs_under_it() -> None:
    report = decide("auto", (True, "/dev/kvm opens"), (True, "a guest kernel ran under KVM"))
    assert report.accel is Accel.KVM and report.kvm == "usable"


def test_present_but_unusable_falls_back_to_tcg() -> None:
    report = decide("auto", (True, "/dev/kvm opens"), (False, "failed to set MSR 0x10a"))
    assert report.accel is Accel.TCG and report.kvm == "present but unusable"
    assert "MSR" in report.sentence()


def test_absent_device_falls_back_without_probe() -> None:
    report = decide("auto", (False, "/dev/kvm does not exist"), None)
    assert report.accel is Accel.TCG and report.kvm == "absent"


def test_tcg_forced_by_config() -> None:
    assert decide("tcg", (True, ""), None).accel is Accel.TCG


def test_kvm_forced_but_unusable_is_an_error() -> None:
    with pytest.raises(HypervisorError, match="KVM requested"):
        decide("kvm", (True, ""), (False, "guest kernel did not reach its first panic"))
    with pytest.raises(HypervisorError, match="does not exist"):
        decide("kvm", (False, "/dev/kvm does not exist"), None)


def test_unknown_wish_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        decide("hvf", (True, ""), None)


def test_missing_device_is_reported(tmp_path: object) -> None:
    ok, reason = kvm_device("/nonexistent/kvm")
    assert not ok and "does not exist" in reason


def test_probe_results_are_cached_per_guest_kernel(tmp_path: Path, monkeypatch: Any) -> None:
    """Sandboxes alternating between two guest kernels probe each once, not on every switch."""
    import asyncio

    from runvm.hypervisor import accel

    probes: list[str] = []

    async def probe(binary: str, kernel: Path, cache_dir: Path, arch: str) -> tuple[bool, str]:
        probes.append(kernel.name)
        return False, "no KVM here"

    monkeypatch.setattr(accel, "kvm_device", lambda: (True, ""))
    monkeypatch.setattr(accel, "probe_kvm", probe)
    kernels = [tmp_path / "vmlinux", tmp_path / "vmlinuz"]
    for k in kernels:
        k.write_bytes(k.name.encode())
    qemu = tmp_path / "qemu"
    qemu.write_bytes(b"q")
    for _ in range(3):
        for k in kernels:
            report = asyncio.run(accel.detect("auto", str(qemu), k, tmp_path / "cache"))
            assert report.accel is Accel.TCG
    assert probes == ["vmlinux", "vmlinuz"]


def test_a_guest_of_another_architecture_is_emulated_without_a_probe(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import asyncio

    import pytest

    from runvm import arch as arches
    from runvm.errors import HypervisorError
    from runvm.hypervisor import accel

    async def probe(*args: Any) -> tuple[bool, str]:
        raise AssertionError("no probe: KVM cannot run another architecture's guest")

    monkeypatch.setattr(arches, "host", lambda: arches.ARCHES["amd64"])
    monkeypatch.setattr(accel, "kvm_device", lambda: (True, ""))
    monkeypatch.setattr(accel, "probe_kvm", probe)
    kernel = tmp_path / "Image"
    kernel.write_bytes(b"k")
    report = asyncio.run(accel.detect("auto", "qemu-system-aarch64", kernel, tmp_path, "arm64"))
    assert report.accel is Accel.TCG and report.kvm == "not for arm64 guests"
    assert report.sentence() == (
        "tcg (KVM not for arm64 guests: an arm64 guest on an amd64 host is emulated)"
    )
    with pytest.raises(HypervisorError, match="KVM cannot run arm64 guests on this amd64 host"):
        asyncio.run(accel.detect("kvm", "qemu-system-aarch64", kernel, tmp_path, "arm64"))


def test_the_kvm_probe_boots_each_architecture_on_its_machine(tmp_path: Path) -> None:
    from runvm.hypervisor.accel import probe_argv

    arm = probe_argv("qemu-system-aarch64", tmp_path / "Image", "arm64")
    assert arm[arm.index("-machine") + 1] == "virt,gic-version=host"
    assert arm[arm.index("-append") + 1].startswith("console=ttyAMA0 ")
    amd = probe_argv("qemu-system-x86_64", tmp_path / "bzImage", "amd64")
    assert amd[amd.index("-machine") + 1] == "pc"
    assert amd[amd.index("-append") + 1].startswith("console=ttyS0 ")
    assert all(a[a.index("-cpu") + 1] == "host" for a in (arm, amd))
