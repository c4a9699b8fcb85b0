"""OCI hooks as the runtime-spec orders them, through containerd's shim and the CLI alike
(the runtime core runs them): order, the status each sees, poststart after the user program
was executed, failing poststart/poststop only warn, a failing prestart leaves nothing."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
from test_lifecycle import Cli, bundle, hook, hook_log
from test_shim_v2 import RUNTIME, wait_for
from test_spec_versions import ctr_spec

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart")
STATUS = ["creating"] * 3 + ["created", "running"]


def every_hook(log: Path, probe: str) -> dict[str, Any]:
    """Each kind logging itself; poststart also runs ``probe`` (the guest's view of the
    container's pid 1) and a failing hook; poststop a failing one, then a logging one."""
    hooks: dict[str, Any] = {kind: [hook(log, kind)] for kind in KINDS}
    hooks["poststart"] = [
        hook(log, "broken", "echo poststart-broke >&2; exit 3"),
        hook(
            log,
            "poststart",
            f"{probe} < /dev/null > {shlex.quote(str(log))}.pid1; {hook_script(log)}",
        ),
    ]
    hooks["poststop"] = [hook(log, "broken", "exit 1"), hook(log, "poststop")]
    return hooks


def hook_script(log: Path) -> str:
    return str(hook(log, "x")["args"][2])


def check_log(log: Path, cid: str, bundle: str) -> None:
    entries = hook_log(log)
    assert [name.split()[0] for name, _ in entries] == [*KINDS, "poststop"]
    for (name, doc), status in zip(entries, [*STATUS, "stopped"], strict=True):
        assert (doc["id"], doc["status"], doc["bundle"]) == (cid, status, bundle), name
    # poststart ran once the user program was executed: pid 1 is it, not crun.
    assert Path(f"{log}.pid1").read_bytes().split(b"\0")[:2] == [b"sleep", b"30"]


def test_ctr_runs_every_hook_in_order(
    containerd: Any,
    tmp_path: Path,
) -> None:
    log = tmp_path / "hooks.log"
    ctr = shlex.join(["ctr", "--address", containerd.address])
    probe = f"{ctr} task exec --exec-id probe h1 cat /proc/1/cmdline"
    spec = ctr_spec(tmp_path, "1.2.0", ["sleep", "30"], hooks=every_hook(log, probe))
    r = containerd.ctr("run", "-d", "--runtime", RUNTIME, "--config", str(spec), "h1")
    assert r.returncode == 0, r.stderr
    assert [n.split()[0] for n, _ in hook_log(log)] == list(KINDS)
    assert containerd.ctr("task", "kill", "-s", "KILL", "h1").returncode == 0
    wait_for("h1 to stop", lambda: b"RUNNING" not in containerd.ctr("task", "ls").stdout)
    assert containerd.ctr("task", "rm", "h1").returncode == 0
    assert containerd.ctr("container", "rm", "h1").returncode == 0
    bundle_dir = containerd.base / "state/io.containerd.runtime.v2.task/default/h1"
    check_log(log, "h1", str(bundle_dir))


def test_ctr_failing_prestart_leaves_nothing(
    containerd: Any,
    tmp_path: Path,
) -> None:
    broken = hook(tmp_path / "unused", "prestart", "echo prestart-broke >&2; exit 9")
    spec = ctr_spec(tmp_path, "1.3.0", ["true"], hooks={"prestart": [broken]})
    r = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--config", str(spec), "h2")
    assert r.returncode != 0 and b"prestart hook failed (exit status 9)" in r.stderr, r.stderr
    containerd.ctr("container", "rm", "h2")
    assert containerd.ctr("task", "ls", "-q").stdout.strip() == b""


def test_cli_poststart_sees_the_user_program_and_failures_only_warn(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    cli = Cli(tmp_path, cli_env)
    log = tmp_path / "hooks.log"
    runvm = shlex.join([sys.executable, "-m", "runvm.cli.main", "--root", str(cli.root)])
    b = bundle(tmp_path, "exec sleep 30")
    spec = json.loads((b / "config.json").read_text())
    spec["process"]["args"] = ["sleep", "30"]
    spec["hooks"] = every_hook(log, f"{runvm} exec hk cat /proc/1/cmdline")
    (b / "config.json").write_text(json.dumps(spec))
    cli.create(b, "hk")
    r = cli("start", "hk")
    assert "poststart hook failed (exit status 3)" in r.stderr and "WARNING" in r.stderr, r.stderr
    assert cli.state("hk")["status"] == "running"
    cli("kill", "hk", "KILL")
    cli.wait_status("hk", "stopped", timeout=30)
    cli("delete", "hk")
    check_log(log, "hk", str(b))
