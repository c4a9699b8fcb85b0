"""A VM that cannot fit under its pod's memory limit is refused with both numbers."""

from __future__ import annotations

import pytest

from runvm import config as cfg
from runvm.errors import ConfigError
from runvm.hypervisor.base import Accel
from runvm.runtime.footprint import HOST_OVERHEAD_MIB, check_fits, vm_footprint_mib


def test_footprint_counts_guest_ram_tcg_cache_and_host_helpers() -> None:
    config = cfg.parse({"hypervisor": {"memory_mib": 256, "tcg_tb_size_mib": 32}})
    assert vm_footprint_mib(config, Accel.TCG) == 256 + 32 + HOST_OVERHEAD_MIB
    assert vm_footprint_mib(config, Accel.KVM) == 256 + HOST_OVERHEAD_MIB


def test_a_pod_limit_below_the_vm_is_refused_with_the_fix() -> None:
    config = cfg.parse({"hypervisor": {"memory_mib": 256}})
    need = vm_footprint_mib(config, Accel.TCG)
    check_fits(config, Accel.TCG, None)
    check_fits(config, Accel.TCG, need << 20)
    with pytest.raises(ConfigError) as refused:
        check_fits(config, Accel.TCG, 192 << 20)
    message = str(refused.value)
    assert "(192 MiB)" in message and f"({need} MiB" in message
    assert f"overhead.podFixed.memory) of at least {need}Mi" in message
