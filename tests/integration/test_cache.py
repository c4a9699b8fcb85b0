"""The VM cache: `runvm cache serve` hands ready VMs to new sandboxes (real QEMU, real daemon).

A handed-over VM must behave like any other (exec, exit codes, rootfs writes; networking is
in test_network's cached case), die with the process that took it, and a daemon killed with
SIGKILL must leave nothing behind once it runs again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import CacheDaemon, add_config, runvm_cli, start_write_exec

from runvm.image.busybox import make_bundle
from runvm.image.ociarchive import busybox_archive

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

RUNVM = [sys.executable, "-m", "runvm.cli.main"]
RUNTIME = "io.containerd.runvm.v2"
cli = runvm_cli


def qemus(marker: str) -> list[int]:
    """PIDs of QEMU processes whose command line mentions ``marker``."""
    out = subprocess.run(["ps", "-ewwo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()
            if "qemu-system" in line and marker in line]  # fmt: skip


def create(env: dict[str, str], bundle: Path, name: str, log: Path) -> None:
    with log.open("wb") as out:  # the monitor keeps its stdio: give it a file, not a pipe
        subprocess.run([*RUNVM, "--root", env["RUNVM_TEST_ROOT"], "create", "--bundle",
                        str(bundle), name], env=env, stdin=subprocess.DEVNULL, stdout=out,
                       stderr=out, check=True, timeout=180)  # fmt: skip


def writable_bundle(path: Path, argv: list[str]) -> Path:
    spec = make_bundle(path, argv)
    spec["root"]["readonly"] = False
    (path / "config.json").write_text(json.dumps(spec))
    return path


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and b"qemu" in _cmdline(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_cached_sandbox_runs_a_container(
    tmp_path: Path, cli_env: dict[str, str], cache_daemon: CacheDaemon
) -> None:
    """Create, start, exec (output and exit code), rootfs writes, delete — in a handed-over VM,
    after which the daemon boots a replacement."""
    cache_daemon.wait(ready=1)
    (pooled,) = qemus("/sandboxes/cache-")
    b = writable_bundle(tmp_path / "bundle", ["sh", "-c", "echo hi > /written; sleep 60"])
    create(cli_env, b, "cached1", tmp_path / "create.log")
    try:
        assert cache_daemon.wait(leased=1)["leased"] == 1
        assert pooled in qemus("")  # the very QEMU the pool had booted now serves the sandbox
        start_write_exec(cli_env, "cached1", b)
        cache_daemon.wait(ready=1)  # refilled
    finally:
        cli(cli_env, "kill", "cached1", "KILL", ok=False)
        cli(cli_env, "delete", "--force", "cached1", ok=False)
    assert gone(pooled)
    assert cache_daemon.wait(leased=0)["ready"] == 1


def test_a_mismatched_or_absent_cache_is_not_used(
    tmp_path: Path, cli_env: dict[str, str], cache_daemon: CacheDaemon
) -> None:
    """A sandbox whose config differs from the daemon's boots on its own (and says why);
    so does one whose cache socket answers nothing."""
    cache_daemon.wait(ready=1)
    make_bundle(tmp_path / "bundle", ["sh", "-c", "exit 3"])
    other = tmp_path / "other.toml"
    other.write_text(Path(cli_env["RUNVM_CONFIG"]).read_text())
    add_config(other, "[hypervisor]\nmemory_mib = 320\n")
    absent = tmp_path / "absent.toml"
    absent.write_text(Path(cli_env["RUNVM_CONFIG"]).read_text())
    add_config(absent, f'[cache]\nsocket = "{tmp_path}/none.sock"\n')
    for conf, why in ((other, "differ in memory_mib"), (absent, "none.sock")):
        env = {**cli_env, "RUNVM_CONFIG": str(conf)}
        r = subprocess.run([*RUNVM, "--root", env["RUNVM_TEST_ROOT"], "--debug", "run", "-b",
                            str(tmp_path / "bundle"), "own"], env=env, capture_output=True,
                           text=True, timeout=180)  # fmt: skip
        assert r.returncode == 3, r.stderr
        assert why in r.stderr, r.stderr
    assert cache_daemon.status()["ready"] == 1 and cache_daemon.status()["leased"] == 0


def test_bad_requests_get_errors_and_the_daemon_lives_on(
    tmp_path: Path, cli_env: dict[str, str], cache_daemon: CacheDaemon
) -> None:
    cache_daemon.wait(ready=1)
    sock_path = tomllib.loads(Path(cli_env["RUNVM_CONFIG"]).read_text())["cache"]["socket"]
    assert oct(os.stat(sock_path).st_mode & 0o777) == "0o600"
    for data, words in ((b"not json\n", "not JSON"), (b"[1]\n", "not a JSON object"),
                        (b'{"op": "steal"}\n', "unknown op"),
                        (b'{"op": "take", "run_dir": "/etc/x"}\n', "not a path under"),
                        (b"x" * 20000, "longer than")):  # fmt: skip
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(sock_path)
            s.sendall(data)
            reply = json.loads(s.recv(65536))
        assert reply["ok"] is False and words in reply["error"], (data[:30], reply)
    with socket.socket(socket.AF_UNIX) as s:  # a client that says nothing is dropped
        s.connect(sock_path)
        s.settimeout(15)
        assert b"no request within" in s.recv(65536)
    assert cache_daemon.wait(ready=1)["leased"] == 0


def test_the_vm_dies_with_the_process_that_took_it(
    tmp_path: Path, cli_env: dict[str, str], cache_daemon: CacheDaemon
) -> None:
    cache_daemon.wait(ready=1)
    (pooled,) = qemus("/sandboxes/cache-")
    b = tmp_path / "bundle"
    make_bundle(b, ["sleep", "60"])
    create(cli_env, b, "taken", tmp_path / "create.log")
    monitor = int(json.loads(cli(cli_env, "state", "taken").stdout)["pid"])
    os.kill(monitor, signal.SIGKILL)
    assert gone(pooled), f"the VM outlived the process that took it: {cache_daemon.log.read_text()}"
    cache_daemon.wait(leased=0)
    cli(cli_env, "delete", "--force", "taken", ok=False)


def test_a_daemon_killed_hard_leaves_nothing_once_restarted(
    tmp_path: Path, cli_env: dict[str, str], cache_daemon: CacheDaemon
) -> None:
    """Pooled QEMUs outlive a SIGKILLed daemon (they may belong to sandboxes); the next daemon
    kills the unclaimed ones and removes their directories; SIGTERM stops the ready ones."""
    cache_daemon.wait(ready=1)
    (pooled,) = qemus("/sandboxes/cache-")
    cache_daemon.stop(signal.SIGKILL)
    assert not gone(pooled, timeout=2)
    cache_daemon.start()
    assert gone(pooled, timeout=30), "the restarted daemon left an unclaimed VM running"
    cache_daemon.wait(ready=1)
    assert cache_daemon.stop() == 0
    assert not qemus("/sandboxes/cache-")
    state = Path(cli_env["RUNVM_CONFIG"]).read_text().split('state_root = "')[1].split('"')[0]
    assert not list(Path(state, "sandboxes").glob("cache-*"))
    assert not list(Path(state, "cache").glob("*.json"))


def test_containerd_shim_takes_a_cached_vm_and_it_dies_with_the_shim(
    containerd: Any, tmp_path: Path, state_root: Path, cache_daemon: CacheDaemon
) -> None:
    """Through containerd: the shim takes the VM (output, exit code, exec; QEMU joins the pod's
    host cgroup), and a shim killed with SIGKILL takes its VM along."""
    image = "localhost/runvm/busybox:latest"
    r = containerd.ctr("image", "import", str(busybox_archive(tmp_path / "bb.tar", image)))
    assert r.returncode == 0, r.stderr
    cache_daemon.wait(ready=1)
    r = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "c1",
                       "sh", "-c", "echo hi; exit 7")  # fmt: skip
    assert (r.stdout, r.returncode) == (b"hi\n", 7), r.stderr
    cache_daemon.wait(ready=1, leased=0)
    (pooled,) = qemus("/sandboxes/cache-")
    r = containerd.ctr("run", "-d", "--runtime", RUNTIME, image, "c2", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    try:
        log = state_root / "k" / "default" / "c2.log"
        try:
            cache_daemon.wait(leased=1, timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nshim log: {log.read_text()[-3000:]}") from None
        memory = [ln for ln in Path(f"/proc/{pooled}/cgroup").read_text().splitlines()
                  if ":memory:" in ln or ln.startswith("0::")]  # fmt: skip
        assert memory and memory[0].endswith("/default/c2"), memory
        r = containerd.ctr("task", "exec", "--exec-id", "e1", "c2", "sh", "-c", "echo ok")
        assert r.stdout == b"ok\n", r.stderr
        record = json.loads((state_root / "k" / "default" / "c2.json").read_text())
        os.kill(record["shim_pid"], signal.SIGKILL)
        assert gone(pooled), "the handed-over VM outlived its shim"
        cache_daemon.wait(leased=0)
    finally:
        containerd.ctr("task", "delete", "-f", "c2")
        containerd.ctr("container", "delete", "c2")
