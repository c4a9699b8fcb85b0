from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from runvm.agent.cgroups import MAX_COUNT, MAX_DEVICES, io_totals, stats
from runvm.cli.events import parse_interval, stats_data
from runvm.cli.update import resources
from runvm.errors import RunvmError


def test_cgroup_stats_from_files(tmp_path: Path) -> None:
    (tmp_path / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (tmp_path / "memory.current").write_text("4096\n")
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "pids.current").write_text("3\n")
    (tmp_path / "pids.max").write_text("100\n")
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    s = stats(tmp_path)
    assert (s.cpu_usage_usec, s.cpu_user_usec, s.cpu_system_usec) == (1500, 1000, 500)
    assert (s.memory_current, s.memory_max, s.pids_current, s.pids_max) == (4096, 0, 3, 100)
    assert s.paused
    data = stats_data(s)
    assert data["cpu"]["usage"]["total"] == 1_500_000 and data["pids"]["current"] == 3


def test_io_stat_summed_over_devices_with_limits(tmp_path: Path) -> None:
    (tmp_path / "io.stat").write_text(
        "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
        "254:16 rbytes=100 wbytes=x rios=3 wios=-4 bogus\n"  # bad numbers are skipped
        f"254:32 rbytes={1 << 63} wbytes=0 rios=0 wios=0\n")  # fmt: skip
    s = stats(tmp_path)
    assert (s.io_write_bytes, s.io_read_ops, s.io_write_ops) == (8192, 4, 2)
    assert s.io_read_bytes == io_totals("")["rbytes"] + MAX_COUNT  # capped, not wrapped
    lines = "".join(f"1:{i} rbytes=1\n" for i in range(MAX_DEVICES + 10))
    assert io_totals(lines)["rbytes"] == MAX_DEVICES


def test_missing_cgroup_gives_zeros(tmp_path: Path) -> None:
    s = stats(tmp_path / "gone")
    assert s.memory_current == 0 and not s.paused


@pytest.mark.parametrize(("text", "seconds"), [("5s", 5), ("500ms", 0.5), ("2m", 120), ("3", 3)])
def test_intervals(text: str, seconds: float) -> None:
    assert parse_interval(text) == seconds


def test_bad_interval() -> None:
    with pytest.raises(RunvmError, match="invalid interval"):
        parse_interval("soon")


def test_update_flags_over_json(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"memory": {"limit": 1000}, "pids": {"limit": 5}}')
    ns = argparse.Namespace(resources=str(path), memory=2000, memory_reservation=None,
                            memory_swap=None, cpu_quota=50000, cpu_period=None, cpu_shares=None,
                            cpuset_cpus=None, cpuset_mems=None, pids_limit=None)  # fmt: skip
    assert resources(ns) == {"memory": {"limit": 2000}, "pids": {"limit": 5},
                             "cpu": {"quota": 50000}}  # fmt: skip
