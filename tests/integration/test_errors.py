"""A failed start says what failed and why, as `runvm` and containerd's `ctr` show it: QEMU's
exit with its complaint, a guest kernel panic with the kernel's reason, an agent that missed
the boot deadline, the guest's refusal (its message), a program that cannot be executed (its
path and the errno, in runc's words). Real QEMU, guest and containerd; nothing left behind.
(Podman's, Docker's and the CRI's messages: test_podman_docker.py, test_cri.py.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import add_config
from test_lifecycle import Cli, bundle

from runvm.image.ociarchive import busybox_archive

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

RUNTIME = "io.containerd.runvm.v2"
IMAGE = "localhost/runvm/busybox:latest"
MISSING = "/nonexistent/prog"


def failing_qemu(tmp_path: Path) -> str:
    """A QEMU that is the real one, asked for a device model it does not have."""
    wrapper = tmp_path / "qemu-system-x86_64"
    wrapper.write_text('#!/bin/sh\nexec qemu-system-x86_64 "$@" -device no-such-device\n')
    wrapper.chmod(0o755)
    return f'[hypervisor]\npath = "{wrapper}"\n'


# kind: (config, program, the message's start, a line it must also contain)
KINDS: dict[str, tuple[str, str, str, str]] = {
    "qemu": ("", "true", "QEMU exited before it was ready (exit status 1): qemu-system-x86_64: "
             "-device no-such-device: 'no-such-device' is not a valid device model name", ""),
    "panic": ('[hypervisor]\nkernel_params = "rdinit=/nonexistent"\n', "true",
              "the guest kernel panicked: VFS: Unable to mount root fs on unknown-block(0,0)",
              "--- guest console (last lines) ---"),
    "deadline": ("[hypervisor]\nboot_timeout = 2\n", "true",
                 "the agent did not answer within 2 s of QEMU's start ([hypervisor] "
                 "boot_timeout)", ""),
    "exec": ("", MISSING, "creating it in the guest failed: unable to start container process: "
             f'exec: "{MISSING}": stat {MISSING}: no such file or directory', ""),
}  # fmt: skip


def settings(kind: str, tmp_path: Path) -> str:
    return failing_qemu(tmp_path) if kind == "qemu" else KINDS[kind][0]


@pytest.mark.parametrize("kind", KINDS)
def test_the_cli_names_the_failure(kind: str, tmp_path: Path, cli_env: dict[str, str]) -> None:
    add_config(Path(cli_env["RUNVM_CONFIG"]), settings(kind, tmp_path))
    _, program, head, also = KINDS[kind]
    cli = Cli(tmp_path, cli_env)
    cid = f"err-{kind}"
    b = bundle(tmp_path, "")
    spec = json.loads((b / "config.json").read_text())
    spec["process"]["args"] = [program]
    (b / "config.json").write_text(json.dumps(spec))
    code, err = cli.create(b, cid, ok=False)
    first = err.splitlines()[0]
    assert code == 1 and head in first, err
    who = f"container {cid}:" if kind == "exec" else f"sandbox {cid}:"
    assert first.startswith(f"runvm: {who}"), err
    assert also in err
    cli.fails("state", cid, expect="does not exist")


def test_the_guest_s_refusal_is_its_message(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = Cli(tmp_path, cli_env)
    b = bundle(tmp_path, "true")
    spec = json.loads((b / "config.json").read_text())
    spec["linux"]["sysctl"] = {"net.ipv4.no_such_knob": "1"}
    (b / "config.json").write_text(json.dumps(spec))
    code, err = cli.create(b, "err-sysctl", ok=False)
    assert code == 1 and err.startswith(
        "runvm: container err-sysctl: creating it in the guest failed: sysctl "
        "net.ipv4.no_such_knob: the guest kernel has no such setting"), err  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_ctr_shows_the_failure(kind: str, containerd: Any, tmp_path: Path) -> None:
    add_config(Path(containerd.env["RUNVM_CONFIG"]), settings(kind, tmp_path))
    _, program, head, also = KINDS[kind]
    archive = busybox_archive(tmp_path / "busybox.tar", IMAGE)
    assert containerd.ctr("image", "import", str(archive)).returncode == 0
    name = f"err-{kind}"
    r = containerd.ctr("run", "--rm", "--runtime", RUNTIME, IMAGE, name, program)
    err = r.stderr.decode()
    assert r.returncode != 0 and head in err, err
    assert also in err
    containerd.ctr("container", "delete", name)  # ctr leaves the container record
    assert containerd.ctr("task", "ls", "-q").stdout.strip() == b""


def test_ctr_shows_an_exec_that_cannot_run(containerd: Any, tmp_path: Path) -> None:
    archive = busybox_archive(tmp_path / "busybox.tar", IMAGE)
    assert containerd.ctr("image", "import", str(archive)).returncode == 0
    r = containerd.ctr("run", "-d", "--runtime", RUNTIME, IMAGE, "err-x", "sleep", "600")
    assert r.returncode == 0, r.stderr
    try:
        r = containerd.ctr("task", "exec", "--exec-id", "x1", "err-x", MISSING)
        assert r.returncode != 0
        assert (f'exec: "{MISSING}": stat {MISSING}: no such file or directory'
                in r.stderr.decode()), r.stderr  # fmt: skip
    finally:
        containerd.ctr("task", "kill", "-s", "KILL", "err-x")
        subprocess.run(["sleep", "1"])
        containerd.ctr("task", "delete", "err-x")
        containerd.ctr("container", "delete", "err-x")
