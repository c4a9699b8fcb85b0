"""A guest booted from the read-only root image on virtio-pmem with DAX (no initramfs).

The guest mounts its root with ``rootflags=dax``; ext4 refuses that mount unless the block
device really supports DAX, so a guest that answers at all is running on the DAX mapping.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import add_config

from runvm import config as cfg
from runvm.image.busybox import make_bundle
from runvm.runtime.container import Container
from runvm.runtime.sandbox import Sandbox, SandboxOptions

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

RUNVM = [sys.executable, "-m", "runvm.cli.main"]


@pytest.fixture
def dax_config(cli_env: dict[str, str]) -> None:
    settings = '[image]\nvariant = "minimal"\ndax = true\n[hypervisor]\nmachine = "pc"\n'
    add_config(Path(cli_env["RUNVM_CONFIG"]), settings)


def _run(tmp_path: Path, cli_env: dict[str, str]) -> None:
    b = tmp_path / "bundle"
    spec = make_bundle(
        b, ["sh", "-c", "cat /proc/cmdline; echo ran > /written; cat /written; exit 5"]
    )
    spec["root"]["readonly"] = False
    (b / "config.json").write_text(json.dumps(spec))
    root = cli_env["RUNVM_TEST_ROOT"]
    r = subprocess.run([*RUNVM, "--root", root, "run", "-b", str(b), "dax"],
                       env=cli_env, capture_output=True, text=True, timeout=180)  # fmt: skip
    subprocess.run([*RUNVM, "--root", root, "delete", "--force", "dax"],
                   env=cli_env, capture_output=True)  # fmt: skip
    assert r.returncode == 5, r.stderr
    cmdline, ran = r.stdout.splitlines()
    assert ran == "ran" and "root=/dev/pmem0" in cmdline and "rootflags=dax" in cmdline
    assert (b / "rootfs" / "written").read_text() == "ran\n"


@pytest.mark.usefixtures("dax_config")
def test_dax_image_sandbox_runs_a_container(tmp_path: Path, cli_env: dict[str, str]) -> None:
    _run(tmp_path, cli_env)


async def _templated(config: cfg.RunvmConfig, bundle: Path) -> tuple[bool, bytes, int]:
    sandbox = await Sandbox.start("daxclone", config, SandboxOptions(hostname="daxclone"))
    try:
        assert sandbox.agent is not None
        container = await Container.create(sandbox, "c", bundle, stdin=False)
        await container.start()
        status = (await sandbox.agent.wait_process("c")).status
        out = await sandbox.agent.read_stream("stdout", "c")
        await container.remove()
        return sandbox.templated, out, status
    finally:
        await sandbox.stop()


def test_dax_image_template_clone_runs_a_container(
    tmp_path: Path, cli_env: dict[str, str], dax_config: None, factory: Path
) -> None:
    """A template booted from the DAX image; its clone maps the same image and runs a container."""
    b = tmp_path / "bundle"
    make_bundle(b, ["sh", "-c", "grep -o rootflags=dax /proc/cmdline; exit 3"])
    config = cfg.load(Path(cli_env["RUNVM_CONFIG"]))
    templated, out, status = asyncio.run(_templated(config, b))
    assert templated and status == 3 and out == b"rootflags=dax\n"
