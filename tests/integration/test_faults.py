"""Faults: SIGKILL of a helper (QEMU, virtiofsd, the CLI's monitor, the shim) at each stage
of a container's life, and an agent crash (real QEMU, real helpers).

After each fault the client sees an exit (137, 255, or a clear error), ``delete`` succeeds,
and nothing is left behind (the leak check: processes, mounts, sockets, state).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import add_config, loose_permissions
from test_lifecycle import RUNVM, Cli, bundle, poll, subreaper

from runvm.image.ociarchive import busybox_archive
from runvm.names import run_dir_name

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

# The container's init: ready at once; on SIGTERM it takes two seconds to stop.
INIT = "trap 'sleep 2; exit 0' TERM; echo ready; while :; do sleep 0.2; done"
FAULT_FILE = ".runvm-test-agent-exit"  # the agent's test fault hook (runvm.test_faults=1)


def pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def kill_helper(kind: str, cid: str, monitor: int) -> None:
    if kind == "qemu":
        targets = pids(f"runvm-{cid},debug-threads")
    elif kind == "virtiofsd":
        targets = pids(f"virtiofsd.*sandboxes/{run_dir_name(cid)}/")
    else:
        targets = [monitor]
    assert targets, f"no {kind} for {cid}"
    for pid in targets:
        os.kill(pid, signal.SIGKILL)


def monitor_status(pid: int, timeout: float = 30) -> int:
    """The exit status of the monitor (our child: we are the subreaper), as a shell shows it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return (
                os.waitstatus_to_exitcode(status) % 256
                if os.WIFEXITED(status)
                else 128 + (os.WTERMSIG(status))
            )
        time.sleep(0.1)
    raise AssertionError(f"monitor {pid} did not exit in {timeout} s")


def gone(cli: Cli, cid: str) -> None:
    """``delete`` succeeds (a container that never came to be is already gone)."""
    r = cli("delete", "--force", cid, ok=False)
    assert r.returncode == 0 or "does not exist" in r.stderr, r.stderr
    cli.fails("state", cid, expect="does not exist")
    poll(lambda: not pids(f"runvm-{cid},debug-threads"), 15, "QEMU to be gone")


def fault_while_creating(cli: Cli, kind: str, cid: str) -> None:
    b = bundle(cli.tmp, INIT)
    err = cli.tmp / "create.err"
    with err.open("wb") as f, (cli.tmp / f"{cid}.out").open("wb") as out:
        creating = subprocess.Popen([*RUNVM, "--root", str(cli.root), "create", "--bundle",
                                     str(b), cid], env=cli.env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=f)  # fmt: skip
        poll(lambda: pids(f"runvm-{cid},debug-threads"), 60, "QEMU to start")
        monitor = children(creating.pid)
        kill_helper(kind, cid, monitor[0] if monitor else -1)
        status = creating.wait(120)
    assert status != 0, "create succeeded after its helper was killed"
    assert err.read_text().strip(), "create failed without a word"
    gone(cli, cid)


def fault_after(cli: Cli, kind: str, cid: str, stage: str) -> None:
    b = bundle(cli.tmp, INIT)
    pid_file = cli.tmp / f"{cid}.pid"
    cli.create(b, cid, "--pid-file", str(pid_file))
    monitor = int(pid_file.read_text())
    exec_client = None
    if stage in ("running", "exec", "stopping"):
        cli("start", cid)
        cli.wait_output(cid, "ready\n")
    if stage == "exec":
        exec_client = subprocess.Popen([*RUNVM, "--root", str(cli.root), "exec", cid, "sh", "-c",
                                        "echo exec-ready; sleep 300"], env=cli.env,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)  # fmt: skip
        assert exec_client.stdout is not None
        assert exec_client.stdout.readline() == b"exec-ready\n"
    if stage == "stopping":
        cli("kill", cid, "TERM")
        time.sleep(0.5)
    if kind == "agent":
        (b / "rootfs" / FAULT_FILE).write_text("exit")
    else:
        kill_helper(kind, cid, monitor)
    cli.wait_status(cid, "stopped", timeout=30)
    status = monitor_status(monitor)
    assert status in (137, 255), f"the container's status after the fault: {status}"
    if exec_client is not None:
        exec_status = exec_client.wait(30)
        assert exec_status in (137, 255), (exec_status, exec_client.stderr.read())  # type: ignore[union-attr]
    if stage == "created":
        cli.fails("start", cid, expect="")
    cli("delete", cid)
    gone(cli, cid)


@pytest.mark.parametrize("kind", ["qemu", "virtiofsd", "monitor"])
@pytest.mark.parametrize("stage", ["creating", "created", "running", "exec", "stopping"])
def test_helper_killed(tmp_path: Path, cli_env: dict[str, str], kind: str, stage: str) -> None:
    cli = Cli(tmp_path, cli_env)
    cid = f"f-{kind[:4]}-{stage[:5]}"
    with subreaper():
        if stage == "creating":
            fault_while_creating(cli, kind, cid)
        else:
            fault_after(cli, kind, cid, stage)


@pytest.mark.parametrize("stage", ["running", "exec"])
def test_agent_crash(tmp_path: Path, cli_env: dict[str, str], stage: str) -> None:
    faults = '[hypervisor]\nkernel_params = "runvm.test_faults=1"\n'
    add_config(Path(cli_env["RUNVM_CONFIG"]), faults)
    cli = Cli(tmp_path, cli_env)
    with subreaper():
        fault_after(cli, "agent", f"f-agent-{stage}", stage)


# --- through containerd and the shim -------------------------------------------------------
RUNTIME = "io.containerd.runvm.v2"
IMAGE = "localhost/runvm/busybox:latest"


def shim_targets(kind: str, name: str) -> list[int]:
    if kind == "shim":
        return pids(f"containerd-shim-runvm-v2.*-id {name}")
    if kind == "qemu":
        return pids(f"runvm-{name},debug-threads")
    return pids(f"virtiofsd.*sandboxes/{run_dir_name(name)}/")


@pytest.mark.parametrize("kind", ["qemu", "virtiofsd", "shim"])
@pytest.mark.parametrize("stage", ["creating", "running", "exec"])
def test_shim_pod_helper_killed(
    containerd: Any, tmp_path: Path, state_root: Path, kind: str, stage: str
) -> None:
    archive = busybox_archive(tmp_path / "busybox.tar", IMAGE)
    assert containerd.ctr("image", "import", str(archive)).returncode == 0
    name = f"sf-{kind}-{stage}"
    ctr = ["ctr", "--address", containerd.address]
    run = [*ctr, "run", "-d", "--runtime", RUNTIME, IMAGE, name, "sleep", "600"]
    client = None
    if stage == "creating":  # the client is `ctr run`, still waiting for the pod
        client = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        poll(lambda: pids(f"runvm-{name},debug-threads"), 60, "QEMU to start")
    else:
        r = subprocess.run(run, capture_output=True, timeout=180)
        assert r.returncode == 0, r.stderr
    if stage == "exec":  # the client is `ctr task exec`, relaying a running process
        client = subprocess.Popen([*ctr, "task", "exec", "--exec-id", "x", name, "sh", "-c",
                                   "echo exec-ready; sleep 300"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)  # fmt: skip
        assert client.stdout is not None and client.stdout.readline() == b"exec-ready\n"
    if stage == "running":  # the shim's state is private too
        assert not loose_permissions(state_root), loose_permissions(state_root)
    targets = shim_targets(kind, name)
    assert targets, f"no {kind} for {name}"
    for pid in targets:
        os.kill(pid, signal.SIGKILL)
    if client is not None:  # the client sees an exit: a status or a clear error
        status = client.wait(60)
        _, err = client.communicate()
        assert status != 0, f"{stage}: the client succeeded after {kind} was killed"
        assert status in (137, 255) or err.strip(), (status, err)

    def stopped() -> bool:
        r = containerd.ctr("task", "ls")
        line = next((ln for ln in r.stdout.decode().splitlines() if ln.startswith(name)), "")
        return not line or "STOPPED" in line

    poll(stopped, 30, f"{name} to stop")
    containerd.ctr("task", "delete", name)  # may say "not found" once the shim is gone
    r = containerd.ctr("container", "delete", name)
    assert r.returncode == 0 or b"not found" in r.stderr, r.stderr
    poll(lambda: not pids(f"runvm-{name},debug-threads"), 15, "QEMU to be gone")
