"""The VM sizing rule (runtime/sizing.py): base plus each container's limits, with caps."""

from __future__ import annotations

from typing import Any

import pytest

from runvm import config as cfg
from runvm.errors import ConfigError
from runvm.runtime.sizing import Size, cpuset_count, needs, vm_size

CAPPED = cfg.RunvmConfig(hypervisor=cfg.HypervisorConfig(vcpus=1, memory_mib=256, max_vcpus=4,
                                                         max_memory_mib=2048))  # fmt: skip


def test_limits_add_to_the_base() -> None:
    one_gib_two_cpus = {"memory": {"limit": 1 << 30}, "cpu": {"quota": 200000, "period": 100000}}
    assert needs(one_gib_two_cpus) == Size(2, 1024)
    assert vm_size(CAPPED, one_gib_two_cpus, "container c") == Size(3, 1280)
    assert needs({"cpu": {"quota": 150000, "period": 100000}}) == Size(2, 0)  # ceil
    assert needs({"cpu": {"quota": 50000}}) == Size(1, 0)  # the default period is 100 ms
    assert needs({"memory": {"limit": (1 << 20) + 1}}) == Size(0, 2)
    assert needs({"cpu": {"quota": -1, "period": 100000}, "memory": {"limit": -1}}) == Size(0, 0)
    assert needs(None) == needs({}) == Size(0, 0)  # no limits: nothing added
    assert vm_size(CAPPED, None, "container c") == Size(1, 256)


def test_a_cpuset_counts_when_it_names_more_cpus() -> None:
    assert cpuset_count("0-3,8") == 5 and cpuset_count("") == 0
    assert needs({"cpu": {"cpus": "0-2", "quota": 100000, "period": 100000}}) == Size(3, 0)
    for bad in ("0-", "a", "3-1", "0-99999"):
        with pytest.raises(ConfigError, match=r"cpu\.cpus"):
            cpuset_count(bad)


def test_past_a_cap_is_refused_with_the_numbers() -> None:
    with pytest.raises(ConfigError, match=r"asks for 4 vCPUs.*would have 5, over the cap of 4"):
        vm_size(CAPPED, {"cpu": {"quota": 400000, "period": 100000}}, "container c")
    with pytest.raises(ConfigError, match=r"asks for 2048 MiB.*2304 MiB, over the cap of 2048"):
        vm_size(CAPPED, {"memory": {"limit": 2 << 30}}, "container c")
    bad: dict[str, Any]
    for bad in ({"memory": {"limit": "1G"}}, {"cpu": {"quota": True}}, {"cpu": [1]}):
        with pytest.raises(ConfigError):
            needs(bad)
