"""A container's limits size its VM (runtime/sizing.py): a real VM through `runvm run`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from conftest import add_config

from runvm.image.busybox import make_bundle

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

RUNVM = [sys.executable, "-m", "runvm.cli.main"]
# Two busy loops for 4 s: with two CPUs the container's CPU time is about twice the wall time.
PROBE = """
cg=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)  # the container's own cgroup
nproc; awk '/MemTotal/ {print $2}' /proc/meminfo; cat $cg/memory.max
used() { awk '/usage_usec/ {print $2}' $cg/cpu.stat; }
a=$(used); (while :; do :; done) & p1=$!; (while :; do :; done) & p2=$!
sleep 4; kill $p1 $p2; wait; b=$(used); echo $((b - a))
dd if=/dev/zero of=/dev/null bs=900M count=1 2>/dev/null && echo touched-900MiB
"""


def sized_bundle(path: Path, resources: Mapping[str, object]) -> Path:
    spec = make_bundle(path, ["sh", "-c", PROBE])
    spec["linux"]["resources"] = resources
    (path / "config.json").write_text(json.dumps(spec))
    return path


def run(env: dict[str, str], bundle: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUNVM, "--root", env["RUNVM_TEST_ROOT"], "run", "-b", str(bundle),
                           name], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def test_limits_size_the_vm(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """1 GiB and a quota of 2 CPUs: the VM has the base (1 vCPU, 256 MiB) plus both, the
    container runs two loops in parallel and touches 900 MiB within its limit."""
    add_config(Path(cli_env["RUNVM_CONFIG"]), "[hypervisor]\nmax_vcpus = 3\n")  # 2 host CPUs
    limits = {"memory": {"limit": 1 << 30}, "cpu": {"quota": 200000, "period": 100000}}
    r = run(cli_env, sized_bundle(tmp_path / "b", limits), "c-sized")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 5, (r.stdout, r.stderr)
    nproc, memtotal_kib, memory_max, cpu_usec, touched = r.stdout.split()
    assert int(nproc) == 3, r.stdout
    assert int(memtotal_kib) > 1200 * 1024, r.stdout  # 1280 MiB less the kernel's own
    assert memory_max == str(1 << 30) and touched == "touched-900MiB", r.stdout
    assert int(cpu_usec) > 1.5 * 4_000_000, f"CPU time {int(cpu_usec) / 1e6:.1f} s in 4 s"


def test_a_limit_past_the_cap_is_refused(tmp_path: Path, cli_env: dict[str, str]) -> None:
    add_config(Path(cli_env["RUNVM_CONFIG"]), "[hypervisor]\nmax_memory_mib = 512\n")
    r = run(cli_env, sized_bundle(tmp_path / "b", {"memory": {"limit": 1 << 30}}), "c-big")
    assert r.returncode != 0
    assert "asks for 1024 MiB" in r.stderr and "over the cap of 512 MiB" in r.stderr, r.stderr


# What the container sees: its VM's memory (kB) and CPUs, and its own memory.max.
SEEN = ("cg=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); "
        "awk '/MemTotal/ {print $2}' /proc/meminfo; nproc; cat $cg/memory.max")  # fmt: skip


def test_update_grows_the_vm_and_gives_it_back(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """256 MiB, then 768 MiB, then 256 MiB again on a running container: the VM's memory
    follows (hot-plugged virtio-mem, given back), and so does the guest cgroup."""
    from test_lifecycle import Cli

    cli = Cli(tmp_path, cli_env)
    bundle = tmp_path / "b"
    hold = "head -c 40000000 /dev/zero > /dev/shm/fill; exec sleep 600"  # 40 MB it uses
    spec = make_bundle(bundle, ["sh", "-c", hold])
    spec["linux"]["resources"] = {"memory": {"limit": 256 << 20}}
    (bundle / "config.json").write_text(json.dumps(spec))
    cli.create(bundle, "c-upd")
    try:
        cli("start", "c-upd")

        def seen() -> tuple[int, int, str]:
            kib, nproc, memory_max = cli("exec", "c-upd", "sh", "-c", SEEN).stdout.split()
            return int(kib), int(nproc), memory_max

        before, _, limit = seen()
        assert limit == str(256 << 20)
        cli("update", "--memory", str(768 << 20), "c-upd")
        grown, _, limit = seen()
        assert limit == str(768 << 20)
        assert 500 * 1024 <= grown - before <= 520 * 1024, (before, grown)
        cli("update", "--memory", str(256 << 20), "c-upd")
        back, _, limit = seen()
        assert limit == str(256 << 20) and abs(back - before) < 8 * 1024, (before, back)
        r = cli("update", "--memory", str(16 << 20), "c-upd", ok=False)
        assert r.returncode != 0 and "is below the" in r.stderr, r.stderr
    finally:
        cli("kill", "c-upd", "KILL", ok=False)
        cli("delete", "--force", "c-upd", ok=False)
