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

    async def probe(binary: str, kernel: Path, cache_dir: Path) -> tuple[bool, str]:
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
