"""Podman and Docker drive runvm through the OCI command line (private stores and daemons).

Images are built locally (busybox-static into an OCI archive); nothing is pulled. Networks
are `none`: no traffic leaves the containers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runvm.image.ociarchive import busybox_archive

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

IMAGE = "localhost/runvm/busybox:latest"
DOCKER = "/usr/bin/docker"  # Debian's docker.io client, matching its dockerd


def _run(argv: list[str], env: dict[str, str], timeout: float = 180, **kw: Any) -> Any:
    return subprocess.run(argv, env=env, capture_output=True, timeout=timeout, **kw)


@contextlib.contextmanager
def podman_client(
    tmp_path: Path, cli_env: dict[str, str], runvm_binary: str, wrap: list[str]
) -> Iterator[Any]:
    """A podman with private storage and network configs; ``wrap`` prefixes every call
    (``nsenter --net=...`` to run it inside a test network namespace)."""
    if not shutil.which("podman"):
        pytest.skip("needs podman (Debian podman)")
    base = Path(tempfile.mkdtemp(prefix="rvp-", dir="/tmp"))
    argv = [*wrap, "podman", "--root", str(base / "storage"), "--runroot", str(base / "run"),
            "--tmpdir", str(base / "tmp"), "--network-config-dir", str(base / "networks"),
            "--cgroup-manager", "cgroupfs", "--events-backend", "file",
            "--runtime", runvm_binary,
            # conmon hands the runtime a minimal environment: the config goes as a flag
            "--runtime-flag", f"config={cli_env['RUNVM_CONFIG']}"]  # fmt: skip

    def call(*args: str, **kw: Any) -> Any:
        return _run([*argv, *args], cli_env, **kw)

    call.argv = argv  # type: ignore[attr-defined]
    call.env = cli_env  # type: ignore[attr-defined]
    archive = busybox_archive(tmp_path / "busybox.tar")
    r = call("load", "-i", str(archive))
    assert r.returncode == 0, r.stderr
    try:
        yield call
    finally:
        call("rm", "-a", "-f", timeout=120)
        call("system", "reset", "-f", timeout=120)
        subprocess.run(["umount", "-R", str(base)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def podman(tmp_path: Path, cli_env: dict[str, str], runvm_binary: str) -> Iterator[Any]:
    with podman_client(tmp_path, cli_env, runvm_binary, []) as call:
        yield call


def test_podman_run_exec_stop_rm(podman: Any) -> None:
    r = podman("run", "--rm", "--network", "none", IMAGE, "sh", "-c",
               "echo hi from podman; uname -r; exit 5")  # fmt: skip
    assert r.returncode == 5, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "hi from podman" and lines[1] != os.uname().release

    r = podman("run", "-d", "--name", "bg", "--network", "none", IMAGE, "sh", "-c",
               'trap "exit 3" TERM; while :; do sleep 1; done')  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = podman("exec", "bg", "sh", "-c", "echo exec-ok; exit 4")
    assert (r.returncode, r.stdout) == (4, b"exec-ok\n"), r.stderr
    r = podman("stop", "-t", "10", "bg")
    assert r.returncode == 0, r.stderr
    r = podman("inspect", "--format", "{{.State.ExitCode}}", "bg")
    assert r.stdout.strip() == b"3"
    assert podman("exec", "bg", "/nonexistent/prog").returncode != 0  # stopped: refused
    assert podman("rm", "-f", "bg").returncode == 0
    failures(podman)


MISSING = "/nonexistent/prog"


def failures(client: Any, *run_args: str) -> None:
    """What the client shows when the guest cannot run the program (runc's words, so the
    client's own exit code for it: 127), or refuses the container (its message)."""
    r = client("run", "--rm", *run_args, "--network", "none", IMAGE, MISSING)
    said = f'exec: "{MISSING}": stat {MISSING}: no such file or directory'
    assert r.returncode == 127 and said in r.stderr.decode(), (r.returncode, r.stderr)
    r = client("run", "--rm", *run_args, "--network", "none", "--sysctl",
               "net.ipv4.no_such_knob=1", IMAGE, "true")  # fmt: skip
    said = "sysctl net.ipv4.no_such_knob: the guest kernel has no such setting"
    assert r.returncode != 0 and said in r.stderr.decode(), (r.returncode, r.stderr)


def interactive(client: Any, *run_args: str) -> None:
    """`<client> run -it ...` on a real terminal: type a line, read the answer, exit 2."""
    import pty

    pid, master = pty.fork()
    if pid == 0:  # the child becomes the client on the terminal
        args = ["run", "--rm", "-it", *run_args, "--network", "none", IMAGE, "sh", "-c",
                "tty; read x; echo got-$x; exit 2"]  # fmt: skip
        os.execvpe(client.argv[0], [*client.argv, *args], client.env)
    out = b""
    deadline = time.monotonic() + 120
    while b"/dev/pts/" not in out:
        assert time.monotonic() < deadline, out
        out += os.read(master, 1024)
    os.write(master, b"abc\r")
    while b"got-abc" not in out:
        assert time.monotonic() < deadline, out
        out += os.read(master, 1024)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2


def test_podman_run_interactive_tty(podman: Any) -> None:
    interactive(podman)


@contextlib.contextmanager
def docker_client(
    containerd: Any,
    tmp_path: Path,
    cli_env: dict[str, str],
    runvm_binary: str,
    wrap: list[str],
) -> Iterator[Any]:
    """A dockerd of the test's own on the test's containerd; ``wrap`` prefixes the daemon
    (``nsenter --net=...``: its networks then live in a test network namespace)."""
    if not (Path(DOCKER).exists() and shutil.which("dockerd") and shutil.which("skopeo")):
        pytest.skip("needs Debian docker.io and skopeo")
    base = Path(tempfile.mkdtemp(prefix="rvd-", dir="/tmp"))
    sock = base / "d.sock"
    log = (base / "dockerd.log").open("wb")
    daemon = subprocess.Popen(
        [*wrap, "dockerd", "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
         "-H", f"unix://{sock}", "--pidfile", str(base / "d.pid"), "--iptables=false",
         "--ip-masq=false", "--bridge=none", "--containerd", containerd.address,
         "--add-runtime", f"runvm={runvm_binary}"],
        stdout=log, stderr=subprocess.STDOUT, env=cli_env, start_new_session=True,
    )  # fmt: skip

    def call(*args: str, **kw: Any) -> Any:
        return _run([DOCKER, "-H", f"unix://{sock}", *args], cli_env, **kw)

    call.argv = [DOCKER, "-H", f"unix://{sock}"]  # type: ignore[attr-defined]
    call.env = cli_env  # type: ignore[attr-defined]

    try:
        deadline = time.monotonic() + 60
        while call("info").returncode != 0:
            assert daemon.poll() is None and time.monotonic() < deadline, "dockerd did not start"
            time.sleep(0.5)
        archive = busybox_archive(tmp_path / "busybox.tar")
        docker_tar = tmp_path / "busybox-docker.tar"
        target = f"docker-archive:{docker_tar}:{IMAGE}"
        r = _run(["skopeo", "copy", f"oci-archive:{archive}", target], cli_env)
        assert r.returncode == 0, r.stderr
        assert call("load", "-i", str(docker_tar)).returncode == 0
        yield call
    finally:
        call("rm", "-f", "bg", "srv", timeout=60)
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        subprocess.run(["umount", "-R", str(base / "exec")], capture_output=True)
        subprocess.run(["umount", "-R", str(base / "data")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def docker(
    containerd: Any, tmp_path: Path, cli_env: dict[str, str], runvm_binary: str
) -> Iterator[Any]:
    with docker_client(containerd, tmp_path, cli_env, runvm_binary, []) as call:
        yield call


def test_docker_run_exec_stop(docker: Any) -> None:
    r = docker("run", "--rm", "--runtime", "runvm", "--network", "none", IMAGE, "sh", "-c",
               "echo hi from docker; uname -r; exit 6")  # fmt: skip
    assert r.returncode == 6, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "hi from docker" and lines[1] != os.uname().release

    r = docker("run", "-d", "--name", "bg", "--runtime", "runvm", "--network", "none", IMAGE,
               "sh", "-c", 'trap "exit 3" TERM; while :; do sleep 1; done')  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = docker("exec", "bg", "sh", "-c", "echo exec-ok; exit 4")
    assert (r.returncode, r.stdout) == (4, b"exec-ok\n"), r.stderr
    assert docker("stop", "-t", "10", "bg").returncode == 0
    r = docker("inspect", "--format", "{{.State.ExitCode}}", "bg")
    assert r.stdout.strip() == b"3"
    assert docker("rm", "-f", "bg").returncode == 0
    interactive(docker, "--runtime", "runvm")
    failures(docker, "--runtime", "runvm")


@pytest.fixture
def test_netns() -> Iterator[str]:
    """A network namespace of the test's own (only lo), where the engines make networks."""
    import uuid

    name = f"rve{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def two_containers_talk(client: Any, network: str, runtime: list[str]) -> None:
    """A server and a client container on ``network``: ping, and a TCP answer."""
    r = client("run", "-d", "--name", "srv", *runtime, "--network", network, "--hostname",
               "srvhost", IMAGE, "nc", "-ll", "-p", "5000", "-e", "/bin/hostname")  # fmt: skip
    assert r.returncode == 0, r.stderr
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    addr = client("inspect", "--format", fmt, "srv").stdout.decode().strip()
    assert addr, "no address for the server"
    r = client("run", "--rm", *runtime, "--network", network, "--cap-add", "NET_RAW", IMAGE,
               "sh", "-c", f"ping -c 1 -W 10 {addr} >/dev/null && echo pinged; "
               f"nc -w 10 {addr} 5000; cat /sys/class/net/eth0/mtu")  # fmt: skip
    assert r.stdout.decode().split() == ["pinged", "srvhost", "1500"], (r.stdout, r.stderr)
    assert client("rm", "-f", "srv").returncode == 0


def test_podman_network_in_a_test_netns(
    tmp_path: Path, cli_env: dict[str, str], runvm_binary: str, test_netns: str
) -> None:
    wrap = ["nsenter", f"--net=/var/run/netns/{test_netns}"]
    with podman_client(tmp_path, cli_env, runvm_binary, wrap) as podman:
        r = podman("network", "create", "--subnet", "10.89.7.0/24", "rvnet")
        assert r.returncode == 0, r.stderr
        two_containers_talk(podman, "rvnet", [])


def test_docker_network_in_a_test_netns(
    containerd: Any,
    tmp_path: Path,
    cli_env: dict[str, str],
    runvm_binary: str,
    test_netns: str,
) -> None:
    wrap = ["nsenter", f"--net=/var/run/netns/{test_netns}"]
    with docker_client(containerd, tmp_path, cli_env, runvm_binary, wrap) as docker:
        r = docker("network", "create", "--subnet", "10.90.7.0/24", "rvdnet")
        assert r.returncode == 0, r.stderr
        two_containers_talk(docker, "rvdnet", ["--runtime", "runvm"])
        assert docker("network", "rm", "rvdnet").returncode == 0
