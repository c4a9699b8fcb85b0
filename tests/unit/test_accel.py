from __future__ import annotations

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
