"""containerd's runc shim with runvm as its runc binary (a private containerd)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from runvm.image.busybox import make_rootfs

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]


def test_ctr_run_exec_kill_ps_with_runc_shim(
    containerd: Any, tmp_path: Path, runvm_binary: str
) -> None:
    rootfs = tmp_path / "rootfs"
    make_rootfs(rootfs)
    runc_root = tmp_path / "runc-root"
    common = ["--runc-binary", runvm_binary, "--runc-root", str(runc_root)]

    # Foreground: output and exit code come back through the shim.
    r = containerd.ctr("run", "--rm", *common, "--rootfs", str(rootfs), "fg1",
                       "sh", "-c", "echo hi from runvm; exit 7")  # fmt: skip
    assert r.stdout == b"hi from runvm\n", r.stderr
    assert r.returncode == 7

    # Detached, then exec, ps and kill.
    script = 'trap "exit 9" TERM; echo up; while :; do sleep 1; done'
    r = containerd.ctr("run", "-d", *common, "--rootfs", str(rootfs), "bg1", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    try:
        r = containerd.ctr("task", "exec", "--exec-id", "e1", "bg1", "sh", "-c",
                           "echo exec-out; exit 3")  # fmt: skip
        assert r.stdout == b"exec-out\n", r.stderr
        assert r.returncode == 3
        r = containerd.ctr("task", "ps", "bg1")
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.decode().split("\n")) >= 2  # header + at least the init
        r = containerd.ctr("task", "kill", "-s", "SIGTERM", "bg1")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 30
        while b"STOPPED" not in containerd.ctr("task", "ls").stdout:
            assert time.monotonic() < deadline, containerd.ctr("task", "ls").stdout
            time.sleep(0.5)
        assert b"STOPPED" in containerd.ctr("task", "ls").stdout
    finally:
        containerd.ctr("task", "kill", "-s", "SIGKILL", "bg1")
        containerd.ctr("task", "delete", "-f", "bg1")
        containerd.ctr("container", "delete", "bg1")
    assert not list(runc_root.glob("*/*/state.json"))
