"""A guest booted from the read-only root image on virtio-pmem with DAX (no initramfs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import add_config

from runvm.image.busybox import make_bundle

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

RUNVM = [sys.executable, "-m", "runvm.cli.main"]


def test_dax_image_sandbox_runs_a_container(tmp_path: Path, cli_env: dict[str, str]) -> None:
    settings = '[image]\nvariant = "minimal"\ndax = true\n[hypervisor]\nmachine = "pc"\n'
    add_config(Path(cli_env["RUNVM_CONFIG"]), settings)
    b = tmp_path / "bundle"
    make_bundle(b, ["sh", "-c", "cat /proc/cmdline; echo ran; exit 5"])
    r = subprocess.run([*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "run", "-b", str(b), "dax"],
                       env=cli_env, capture_output=True, text=True, timeout=180)  # fmt: skip
    subprocess.run([*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "delete", "--force", "dax"],
                   env=cli_env, capture_output=True)  # fmt: skip
    assert r.returncode == 5, r.stderr
    cmdline, ran = r.stdout.splitlines()
    assert ran == "ran" and "root=/dev/pmem0" in cmdline and "rootflags=dax" in cmdline
