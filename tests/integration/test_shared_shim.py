"""One shim process serving every pod of a containerd namespace (``shim.scope = "namespace"``):
real containerd, real VMs, each pod in a network namespace of the test's own (test_network's
bridge), traffic between the two pods' VMs only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import add_config
from test_network import Pods, ip, pods  # noqa: F401  (the fixture)
from test_shim_v2 import RUNTIME, exec_out, image, procs_with, task_row, wait_for  # noqa: F401

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

SHIM = "containerd-shim-runvm-v2"


def tc_qdiscs(netns: str, dev: str) -> str:
    return subprocess.run(["tc", "-n", netns, "qdisc", "show", "dev", dev],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


def run_pod(containerd: Any, ref: str, task_id: str, netns: str) -> int:
    r = containerd.ctr("run", "-d", "--runtime", RUNTIME, "--with-ns", f"network:{netns}",
                       ref, task_id, "sleep", "1000")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return int(task_row(containerd, task_id)[1])


def end_task(containerd: Any, task_id: str) -> None:
    containerd.ctr("task", "kill", "-s", "SIGKILL", task_id)
    wait_for("exit", lambda: task_row(containerd, task_id)[2:3] in (["STOPPED"], []))
    assert containerd.ctr("task", "delete", task_id).returncode == 0
    assert containerd.ctr("container", "delete", task_id).returncode == 0


def test_one_shim_serves_the_namespace(
    containerd: Any,
    image: str,  # noqa: F811
    state_root: Path,
    tmp_path: Path,
    pods: Pods,  # noqa: F811
) -> None:
    add_config(tmp_path / "runvm.toml", '[shim]\nscope = "namespace"\n')
    records = state_root / "k" / "default"
    ids = ["n1", "n2"]
    try:
        vm_pids = [run_pod(containerd, image, t, pods.path(k)) for k, t in enumerate(ids)]
        assert len(set(vm_pids)) == 2 and len(procs_with("qemu-system", str(state_root))) == 2
        shims = procs_with(SHIM, containerd.address)
        assert len(shims) == 1, shims
        assert sorted(p.name for p in records.glob("*.json")) == ["n1.json", "n2.json"]
        for t in ids:
            assert json.loads((records / f"{t}.json").read_text())["shim_pid"] == shims[0]
        # Each VM's NIC is in its own pod's namespace: the pods reach each other.
        out = exec_out(containerd, "n1", "p", "ping", "-c", "1", "-W", "10", "10.77.0.12")
        assert "1 packets received" in out, out
        # Each pod's QEMU is accounted in the host cgroup its config names.
        cgroup = Path(f"/proc/{vm_pids[0]}/cgroup").read_text().splitlines()
        assert [ln for ln in cgroup if ln.endswith("/default/n1")], cgroup

        end_task(containerd, "n1")
        assert not (records / "n1.json").exists() and pods.host_side_clean(0)
        assert exec_out(containerd, "n2", "still", "echo", "alive") == "alive"
        assert procs_with(SHIM, containerd.address) == shims
        end_task(containerd, "n2")
        wait_for("the shim to exit", lambda: not procs_with(SHIM, containerd.address))
        assert pods.host_side_clean(1) and not [p for p in records.rglob("*") if not p.is_dir()]

        # A shared shim killed takes its pods' VMs with it; containerd cleans up after it.
        for k, t in enumerate(["m1", "m2"]):
            run_pod(containerd, image, t, pods.path(k))
            ids.append(t)
        # A NIC that joins m1's pod later is hot-plugged, and the record names its redirect.
        ip("-n", pods.router, "link", "add", "v7", "type", "veth", "peer", "name", "eth1",
           "netns", pods.pods[0])  # fmt: skip
        ip("-n", pods.pods[0], "link", "set", "eth1", "up")
        record = records / "m1.json"
        wait_for(
            "the late NIC in m1's record",
            lambda: len(json.loads(record.read_text())["network"]["redirects"]) == 2,
        )
        assert "ingress" in tc_qdiscs(pods.pods[0], "eth1")
        (shim,) = procs_with(SHIM, containerd.address)
        os.kill(shim, signal.SIGKILL)
        wait_for("the VMs to die with their shim",
                 lambda: not procs_with("qemu-system", str(state_root)))  # fmt: skip
        for t in ("m1", "m2"):
            wait_for("containerd to see the exit",
                     lambda t=t: task_row(containerd, t)[2:3] in (["STOPPED"], []))  # fmt: skip
            containerd.ctr("task", "delete", "-f", t)
        wait_for("the redirects to go",
                 lambda: pods.host_side_clean(0) and pods.host_side_clean(1), 20)  # fmt: skip
        assert "ingress" not in tc_qdiscs(pods.pods[0], "eth1")
        assert not Path("/sys/fs/cgroup/memory/default/m1").exists()
    finally:
        for t in reversed(ids):
            containerd.ctr("task", "delete", "-f", t)
            containerd.ctr("container", "delete", t)
