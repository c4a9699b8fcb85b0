"""`runvm run` end to end: a busybox container in its own VM (real QEMU, virtiofsd, crun)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import add_config, guest_arch

from runvm import arch as arches
from runvm.image.busybox import make_bundle
from runvm.runtime.container import Container
from runvm.runtime.sandbox import Sandbox

RUNVM = [sys.executable, "-m", "runvm.cli.main"]

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]


def bundle(tmp_path: Path, script: str, **process: Any) -> Path:
    path = tmp_path / "bundle"
    make_bundle(path, ["sh", "-c", script], arch=guest_arch(), **process)
    return path


def runvm(env: dict[str, str], *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*RUNVM, "--root", env["RUNVM_TEST_ROOT"], *args], env=env, capture_output=True,
        timeout=180, **kw,
    )  # fmt: skip


def edit_spec(path: Path, fn: Any) -> None:
    spec = json.loads((path / "config.json").read_text())
    fn(spec)
    (path / "config.json").write_text(json.dumps(spec))


@pytest.mark.smoke
def test_echo_exit_code_and_separate_streams(tmp_path: Path, cli_env: dict[str, str]) -> None:
    b = bundle(tmp_path, "echo hello from the vm; echo to-stderr >&2; exit 42")
    r = runvm(cli_env, "run", "--bundle", str(b), "c-echo")
    assert r.returncode == 42, r.stderr
    assert r.stdout == b"hello from the vm\n"
    assert r.stderr == b"to-stderr\n"


@pytest.mark.smoke
def test_the_guest_has_the_containers_architecture(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """The container's own ``uname -m`` is its architecture's (aarch64 for arm64 under the
    smoke matrix's hypervisor.arch = arm64), in a guest kernel, not the host's."""
    b = bundle(tmp_path, "uname -m; uname -r")
    r = runvm(cli_env, "run", "--bundle", str(b), "c-arch")
    assert r.returncode == 0, r.stderr
    machine, release = r.stdout.decode().split()
    assert machine == arches.get(guest_arch() or arches.host().name).uname
    assert release != os.uname().release


def test_one_mebibyte_through_cat(tmp_path: Path, cli_env: dict[str, str]) -> None:
    data = os.urandom(1 << 20)
    b = bundle(tmp_path, "cat")
    r = runvm(cli_env, "run", "--bundle", str(b), "c-cat", input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data


def test_identity_and_rootfs_from_config(tmp_path: Path, cli_env: dict[str, str]) -> None:
    b = bundle(
        tmp_path,
        "hostname; echo $GREETING; pwd; id -u; id -g; id -G; cat /data/in.txt; "
        "echo written-in-guest > /data/out.txt",
        env=["PATH=/bin:/usr/bin", "GREETING=hi-env"], cwd="/data",
        user={"uid": 1000, "gid": 1000, "additionalGids": [1000, 2000]},
    )  # fmt: skip

    def change(spec: dict[str, Any]) -> None:
        spec["hostname"] = "from-config"
        spec["root"]["readonly"] = False

    edit_spec(b, change)
    data = b / "rootfs/data"
    data.mkdir()
    (data / "in.txt").write_text("read-from-host\n")
    os.chown(data, 1000, 1000)
    r = runvm(cli_env, "run", "--bundle", str(b), "c-ident")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines == ["from-config", "hi-env", "/data", "1000", "1000", "1000 2000",
                     "read-from-host"]  # fmt: skip
    assert (data / "out.txt").read_text() == "written-in-guest\n"


def test_isolation_inside_the_guest(tmp_path: Path, cli_env: dict[str, str]) -> None:
    script = (
        "echo pid=$$; echo procs /proc/[0-9]*; "
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; echo nofile=$(ulimit -n); "
        "echo kcore=$(cat /proc/kcore | wc -c) firmware=$(ls /sys/firmware | wc -l); "
        "echo x > /proc/sys/kernel/hostname 2>/dev/null && echo sys-writable || echo sys-ro; "
        "echo memmax=$(cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max); "
        "ls /dev | grep -c vport; ls / | tr '\\n' ' '; echo; "
        "unshare -U true 2>/dev/null && echo unshare-allowed || echo unshare-blocked"
    )
    b = bundle(tmp_path, script)

    def change(spec: dict[str, Any]) -> None:
        spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 321}]
        spec["linux"]["resources"]["memory"] = {"limit": 64 << 20}
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/sys/fs/cgroup"]
        spec["mounts"].append(
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup2",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "ro"],
            }
        )
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["unshare"], "action": "SCMP_ACT_ERRNO"}],
        }  # fmt: skip

    edit_spec(b, change)
    r = runvm(cli_env, "run", "--bundle", str(b), "c-iso")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    lines = out.splitlines()
    assert "pid=1" in lines
    assert "procs /proc/1" in lines  # the shell expands the glob itself: only PID 1 exists
    # Default caps: AUDIT_WRITE(29), KILL(5), NET_BIND_SERVICE(10) = 0x20000420.
    assert "CapEff:\t0000000020000420" in lines
    assert "NoNewPrivs:\t1" in lines
    assert "nofile=321" in lines
    assert "kcore=0 firmware=0" in lines and "sys-ro" in lines  # masked: nothing to read
    assert f"memmax={64 << 20}" in lines
    assert lines[lines.index(f"memmax={64 << 20}") + 1] == "0"  # no /dev/vport* inside
    root_listing = lines[lines.index(f"memmax={64 << 20}") + 2].split()
    assert "init" not in root_listing and "bin" in root_listing
    assert "unshare-blocked" in lines


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 7), (signal.SIGUSR1, 9)])
def test_signals_are_forwarded_to_init(
    tmp_path: Path, cli_env: dict[str, str], signum: int, code: int
) -> None:
    # A namespace init ignores signals it has no handler for: give it handlers.
    b = bundle(tmp_path, 'trap "exit 7" TERM; trap "exit 9" USR1; echo ready; '
                         "while :; do sleep 1; done")  # fmt: skip
    proc = subprocess.Popen(
        [*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "run", "--bundle", str(b), "c-sig"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signum)
    assert proc.wait(60) == code


def test_init_killed_from_outside_reports_137(tmp_path: Path, runvm_config: Any) -> None:
    b = bundle(tmp_path, "while :; do sleep 1; done")

    async def scenario() -> int:
        sandbox = await Sandbox.start("c-kill", runvm_config)
        try:
            container = await Container.create(sandbox, "c-kill", b, stdin=False)
            try:
                await container.start()
                assert sandbox.agent is not None
                await sandbox.agent.signal_process("c-kill", "", signal.SIGKILL)
                return (await sandbox.agent.wait_process("c-kill")).status
            finally:
                await container.remove()
        finally:
            await sandbox.stop()

    assert asyncio.run(scenario()) == 137


@pytest.mark.parametrize("problem", ["malformed", "no-rootfs", "no-kernel"])
def test_bad_input_is_one_clear_line(tmp_path: Path, cli_env: dict[str, str], problem: str) -> None:
    b = bundle(tmp_path, "true")
    env = dict(cli_env)
    if problem == "malformed":
        (b / "config.json").write_text('{"ociVersion": "1.0.2", "root": ')
        expect = "not valid JSON"
    elif problem == "no-rootfs":
        edit_spec(b, lambda s: s["root"].update(path="/nonexistent/rootfs"))
        expect = "rootfs /nonexistent/rootfs does not exist"
    else:
        conf = Path(env["RUNVM_CONFIG"])
        add_config(conf, '[image]\nkernel = "/nonexistent/vmlinuz"\n'
                        'initrd = "/nonexistent/initrd"\n')  # fmt: skip
        expect = "kernel /nonexistent/vmlinuz does not exist"
    started = time.monotonic()
    r = runvm(env, "run", "--bundle", str(b), f"c-bad-{problem}")
    assert r.returncode == 1
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], r.stderr
    assert time.monotonic() - started < 10


def _read_until(fd: int, needle: bytes, timeout: float = 90) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} not seen; got {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            assert chunk, f"EOF before {needle!r}; got {seen!r}"
            seen += chunk
    return seen


def test_terminal_with_window_size_changes(tmp_path: Path, cli_env: dict[str, str]) -> None:
    b = bundle(tmp_path, "tty; stty size; read line; stty size; exit 3", terminal=True)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))

    def controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "run", "--bundle", str(b), "c-tty"],
        env=cli_env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=controlling_tty,
    )  # fmt: skip
    os.close(slave)
    try:
        first = _read_until(master, b"30 100")
        assert b"/dev/pts/" in first  # a real terminal inside the container
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        time.sleep(2)  # SIGWINCH -> runvm -> TtyWinResize in the guest
        os.write(master, b"go\r")
        _read_until(master, b"40 120")
        assert proc.wait(60) == 3
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_qemu_killed_mid_run_fails_cleanly(tmp_path: Path, cli_env: dict[str, str]) -> None:
    b = bundle(tmp_path, "echo ready; while :; do sleep 1; done")
    proc = subprocess.Popen(
        [*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "run", "--bundle", str(b), "c-qkill"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"ready\n"
    qemu = [
        int(line.split()[0])
        for line in subprocess.run(
            ["ps", "-eo", "pid=,args="], capture_output=True, text=True
        ).stdout.splitlines()
        if "qemu-system" in line and "runvm-c-qkill" in line
    ]
    assert len(qemu) == 1
    os.kill(qemu[0], signal.SIGKILL)
    assert proc.wait(30) == 255  # the container was lost, its status unknown
    err = proc.stderr.read().decode()
    assert err.startswith("runvm: ") and "lost the container" in err


def test_demo_runs_a_container_in_a_vm(cli_env: dict[str, str]) -> None:
    r = runvm(cli_env, "demo")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "hello from a busybox container in its own VM" in out
    assert f"kernel seen inside:  {os.uname().release}" not in out
    assert "processes visible:   /proc/1" in out


def test_virtiofsd_killed_mid_run_stops_the_vm(tmp_path: Path, cli_env: dict[str, str]) -> None:
    b = bundle(tmp_path, "echo ready; while :; do sleep 1; done")
    proc = subprocess.Popen(
        [*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "run", "--bundle", str(b), "c-fskill"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"ready\n"
    ps = subprocess.run(["ps", "-ewwo", "pid=,args="], capture_output=True, text=True).stdout
    fsd = [int(ln.split()[0]) for ln in ps.splitlines() if "virtiofsd" in ln and "/c-fskill/" in ln]
    assert fsd
    for pid in fsd:
        os.kill(pid, signal.SIGKILL)
    code = proc.wait(60)
    err = proc.stderr.read().decode()
    assert code == 255, err
    assert "virtiofsd exited" in err
