"""Least privilege on the host (real QEMU, real virtiofsd): QEMU under its seccomp filter and,
when configured, as an unprivileged user; virtiofsd under its own seccomp filter."""

from __future__ import annotations

import json
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import add_config, runvm_cli

from runvm.image.busybox import make_bundle

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

QEMU_USER = "runvm-qemu"  # made by scripts/install


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def helper_pids(kind: str, marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"{kind}.*{marker}"], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())


def create(env: dict[str, str], tmp_path: Path, bundle: Path, cid: str) -> None:
    """``runvm create`` with files as stdio (the monitor keeps them for the container's life)."""
    with (tmp_path / "create.out").open("w") as out:
        r = subprocess.run([sys.executable, "-m", "runvm.cli.main", "--root",
                            env["RUNVM_TEST_ROOT"], "create", "--bundle", str(bundle), cid],
                           env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                           timeout=180)  # fmt: skip
    assert r.returncode == 0, (tmp_path / "create.out").read_text()


def test_qemu_unprivileged_under_seccomp(cli_env: dict[str, str], tmp_path: Path) -> None:
    account = pwd.getpwnam(QEMU_USER)
    add_config(Path(cli_env["RUNVM_CONFIG"]), f'[hypervisor]\nuser = "{QEMU_USER}"\n')
    bundle = tmp_path / "bundle"
    spec = make_bundle(bundle, ["sh", "-c", "echo hello > /out; sleep 60"])
    spec["root"]["readonly"] = False
    (bundle / "config.json").write_text(json.dumps(spec))
    create(cli_env, tmp_path, bundle, "c-priv")
    try:
        (qemu_pid,) = helper_pids("qemu-system", "runvm-c-priv")
        qemu = status(qemu_pid)
        assert qemu["Uid"].split()[:2] == [str(account.pw_uid)] * 2
        assert qemu["Gid"].split()[:2] == [str(account.pw_gid)] * 2
        assert qemu["CapEff"] == "0000000000000000"
        assert qemu["Seccomp"] == "2"  # filter mode
        assert qemu["NoNewPrivs"] == "1"
        # virtiofsd: a parent in the sandbox's namespaces, and its worker under seccomp
        outer, worker = helper_pids("virtiofsd", "c-priv")
        assert status(worker)["PPid"] == str(outer)
        assert status(worker)["Seccomp"] == "2" and status(worker)["NoNewPrivs"] == "1"
        assert status(outer)["CapEff"] == "0000000000000000"
        runvm_cli(cli_env, "start", "c-priv")
        state = runvm_cli(cli_env, "state", "c-priv").stdout
        assert '"running"' in state
        wait = "for i in $(seq 20); do test -s /out && exit 0; sleep 0.5; done; exit 1"
        runvm_cli(cli_env, "exec", "c-priv", "sh", "-c", wait)
        assert (bundle / "rootfs/out").read_text() == "hello\n"  # through virtio-fs
    finally:
        runvm_cli(cli_env, "delete", "--force", "c-priv")


def test_unprivileged_qemu_refuses_9p_and_names_unknown_users(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    conf = Path(cli_env["RUNVM_CONFIG"])
    bundle = tmp_path / "bundle"
    make_bundle(bundle, ["true"])
    add_config(conf, '[hypervisor]\nuser = "no-such-user-here"\n')
    r = runvm_cli(cli_env, "run", "--bundle", str(bundle), "c-nouser", ok=False)
    assert r.returncode != 0 and "no user 'no-such-user-here'" in r.stderr
    add_config(conf, f'[hypervisor]\nuser = "{QEMU_USER}"\n[storage]\nshared_fs = "9p"\n')
    r = runvm_cli(cli_env, "run", "--bundle", str(bundle), "c-9p", ok=False)
    assert r.returncode != 0 and "hypervisor.user" in r.stderr
