"""The debug console: `runvm debug ID` typed into through tmux, into a CLI container's VM and
into a containerd pod's; a command at its prompt shows the guest's own view (its kernel, the
agent as PID 1, the container's process), and it is refused while the config says no."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import add_config
from test_lifecycle import RUNVM, Cli, bundle

from runvm import config as cfg
from runvm.image import builder
from runvm.image.ociarchive import busybox_archive
from runvm.protocol import DEBUG_OFF

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

ON = "[debug]\nconsole = true\n"
RUNTIME = "io.containerd.runvm.v2"
IMAGE = "localhost/runvm/busybox:latest"


class Tmux:
    """A private tmux server (its own socket) running one command in a 160x40 pane."""

    def __init__(self, socket: Path, command: str) -> None:
        self.base = ["tmux", "-S", str(socket)]
        subprocess.run([*self.base, "new-session", "-d", "-x", "160", "-y", "40",
                        f"{command}; echo debug-status=$?; sleep 120"], check=True)  # fmt: skip

    def type(self, line: str) -> None:
        subprocess.run([*self.base, "send-keys", "-l", line], check=True)
        subprocess.run([*self.base, "send-keys", "Enter"], check=True)

    def screen(self) -> str:
        return subprocess.run([*self.base, "capture-pane", "-p", "-J", "-S", "-200"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while text not in (screen := self.screen()):
            assert time.monotonic() < deadline, f"{text!r} not on the screen:\n{screen}"
            time.sleep(0.3)
        return screen

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


@pytest.fixture
def tmux_socket(tmp_path: Path) -> Iterator[Path]:
    if not shutil.which("tmux"):
        pytest.skip("needs tmux (Debian tmux)")
    yield tmp_path / "tmux.sock"


def guest_kernel(config_path: str) -> str:
    variant = cfg.load(Path(config_path)).image.variant
    return builder.current(variant=variant).kernel_release


def use_console(tmux: Tmux, container_marker: str, kernel: str) -> None:
    """At the prompt: the guest's kernel, its PID 1 (the agent) and the container's process
    in view; then ``exit`` ends the command with the shell's status."""
    tmux.wait_for("runvm-debug:/#")
    tmux.type("uname -r; cat /proc/1/cmdline | tr '\\0' ' '; echo; ps -o pid,args | grep -v grep"
              " | grep " + container_marker + "; echo probe-$((6 * 7))")  # fmt: skip
    screen = tmux.wait_for("probe-42")
    lines = screen.splitlines()
    assert kernel in lines, screen  # the guest's own kernel, not the host's
    assert any("python3" in ln and "/init" in ln for ln in lines), screen
    assert any(container_marker in ln and "sleep" in ln for ln in lines), screen
    tmux.type("exit 3")
    tmux.wait_for("debug-status=3")


def test_debug_console_into_a_cli_container(
    tmp_path: Path, cli_env: dict[str, str], tmux_socket: Path
) -> None:
    cli = Cli(tmp_path, cli_env)
    cid = "dbg-cli"
    cli.create(bundle(tmp_path, "exec sleep 3601"), cid)
    cli("start", cid)
    try:
        off = cli("debug", cid, "true", ok=False)  # not enabled
        assert off.returncode == 1 and DEBUG_OFF in off.stderr, off.stderr
        missing = cli("debug", "no-such-sandbox", ok=False)
        assert missing.returncode == 1 and "no running sandbox 'no-such-sandbox'" in missing.stderr
    finally:
        cli("kill", cid, "KILL")
        cli.wait_status(cid, "stopped")
        cli("delete", cid)

    add_config(Path(cli_env["RUNVM_CONFIG"]), ON)
    cli.create(bundle(tmp_path, "exec sleep 3602"), cid)
    cli("start", cid)
    tmux = Tmux(tmux_socket, " ".join(shlex.quote(a) for a in (
        "env", f"RUNVM_CONFIG={cli_env['RUNVM_CONFIG']}", *RUNVM, "--root", str(cli.root),
        "debug", cid)))  # fmt: skip
    try:
        use_console(tmux, "3602", guest_kernel(cli_env["RUNVM_CONFIG"]))
        # without a terminal: a command's output and status, as a script gets them
        r = cli("debug", cid, "sh", "-c", "echo out-$((2 * 3)); echo err >&2; exit 5", ok=False)
        assert (r.returncode, r.stdout, r.stderr) == (5, "out-6\n", "err\n")
    finally:
        tmux.close()
        cli("kill", cid, "KILL")
        cli.wait_status(cid, "stopped")
        cli("delete", cid)


def test_debug_console_into_a_containerd_pod(
    containerd: Any, tmp_path: Path, tmux_socket: Path
) -> None:
    config = containerd.env["RUNVM_CONFIG"]
    archive = busybox_archive(tmp_path / "busybox.tar", IMAGE)
    assert containerd.ctr("image", "import", str(archive)).returncode == 0
    env = {"RUNVM_CONFIG": config}
    debug = [*RUNVM, "debug"]
    name = "dbg-ctr"
    r = containerd.ctr("run", "-d", "--runtime", RUNTIME, IMAGE, name, "sleep", "3603")
    assert r.returncode == 0, r.stderr
    try:
        off = subprocess.run([*debug, name, "true"], env={**containerd.env, **env},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert off.returncode == 1 and DEBUG_OFF in off.stderr, off.stderr
    finally:
        containerd.ctr("task", "kill", "-s", "KILL", name)
        time.sleep(1)
        containerd.ctr("task", "delete", name)
        containerd.ctr("container", "delete", name)

    add_config(Path(config), ON)  # the next shim reads it
    r = containerd.ctr("run", "-d", "--runtime", RUNTIME, IMAGE, name, "sleep", "3604")
    assert r.returncode == 0, r.stderr
    tmux = Tmux(tmux_socket, " ".join(shlex.quote(a) for a in (
        "env", f"RUNVM_CONFIG={config}", sys.executable, "-m", "runvm.cli.main", "debug",
        name)))  # fmt: skip
    try:
        use_console(tmux, "3604", guest_kernel(config))
    finally:
        tmux.close()
        containerd.ctr("task", "kill", "-s", "KILL", name)
        for _ in range(50):
            if containerd.ctr("task", "delete", name).returncode == 0:
                break
            time.sleep(0.2)
        assert containerd.ctr("container", "delete", name).returncode == 0
