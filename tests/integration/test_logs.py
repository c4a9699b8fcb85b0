"""`runvm logs ID`: a sandbox's logs in one place, interleaved by time: the guest console
and the agent's lines in it, virtiofsd's, the monitor's or the shim's; kept with a CLI
container until `runvm delete`, with a containerd pod while its VM lives; text or JSON."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_lifecycle import RUNVM, Cli, bundle

from runvm.image.ociarchive import busybox_archive

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

RUNTIME = "io.containerd.runvm.v2"
IMAGE = "localhost/runvm/busybox:latest"


def entries(env: dict[str, str], name: str) -> list[dict[str, str]]:
    r = subprocess.run([*RUNVM, "--log-format", "json", "logs", name], env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def said(found: list[dict[str, str]], source: str, *texts: str) -> bool:
    """A line of ``source`` that says every one of ``texts``."""
    return any(e["source"] == source and all(t in e["msg"] for t in texts) for e in found)


def in_time_order(found: list[dict[str, str]]) -> bool:
    times = [e["time"] for e in found]
    return all(times) and times == sorted(times)


def test_logs_of_a_cli_container_until_it_is_deleted(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    cli = Cli(tmp_path, cli_env)
    cid = "logs-cli"
    cli.create(bundle(tmp_path, "echo out; exit 3"), cid)
    cli("start", cid)
    cli.wait_status(cid, "stopped")
    found = entries(cli.env, cid)
    assert in_time_order(found), found
    assert said(found, "agent", f"container {cid} created")  # the guest's side
    assert said(found, "agent", "exited (status 3)")
    assert said(found, "monitor", f"pod {cid}: ", " VM up (pid ")  # the host's side
    assert said(found, "monitor", f"container {cid} exited (status 3)")
    assert said(found, "virtiofsd", "virtio_session_mount")
    text = cli("logs", cid).stdout.splitlines()  # the same as text (the VM may still stop)
    assert [line.split()[1] for line in text[: len(found)]] == [e["source"] for e in found]
    cli("delete", cid)
    gone = cli("logs", cid, ok=False)
    assert gone.returncode == 1 and f"no sandbox '{cid}'" in gone.stderr


def test_logs_of_a_containerd_pod(containerd: Any, tmp_path: Path) -> None:
    archive = busybox_archive(tmp_path / "busybox.tar", IMAGE)
    assert containerd.ctr("image", "import", str(archive)).returncode == 0
    name = "logs-ctr"
    r = containerd.ctr("run", "-d", "--runtime", RUNTIME, IMAGE, name, "sleep", "600")
    assert r.returncode == 0, r.stderr
    try:
        found = entries(containerd.env, name)
        assert in_time_order(found), found
        assert said(found, "shim", f"pod {name}: ", " VM up (pid ")
        assert said(found, "agent", f"container {name} created")
        assert said(found, "agent", f"container {name} started")
    finally:
        containerd.ctr("task", "kill", "-s", "KILL", name)
        for _ in range(50):
            if containerd.ctr("task", "delete", name).returncode == 0:
                break
            time.sleep(0.2)
        containerd.ctr("container", "delete", name)
    r = subprocess.run([*RUNVM, "logs", name], env=containerd.env, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1 and f"no sandbox '{name}'" in r.stderr
