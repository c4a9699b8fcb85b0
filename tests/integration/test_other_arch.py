"""Containers of the other architecture (arm64 on an amd64 host) in VMs of theirs, through
the real clients: containerd's ctr with ``--platform``, Docker with ``--platform``, Podman
with ``--arch``. The image is a busybox built here from Debian's busybox-static of that
architecture; nothing is pulled. Nothing names the architecture to runvm: it reads it from
the container's program.

A container that reports the guest image's kernel release and ``uname -m`` of its
architecture ran in that architecture's kernel (user-mode emulation would report the host's
kernel), and ctr's task PID, the VM's, is a ``qemu-system-<arch>``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import add_config, runvm_cli
from test_podman_docker import docker_client, podman_client
from test_template import check_clone_grows, clone_argv, templates_in
from test_template import first_use as first_use  # the fixture

from runvm import arch as arches
from runvm import image
from runvm.image.ociarchive import busybox_archive

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

OTHER = next(a for a in arches.ARCHES.values() if a != arches.host())
IMAGE = f"localhost/runvm/busybox:{OTHER.name}"
PLATFORM = f"linux/{OTHER.name}"
RUNTIME = "io.containerd.runvm.v2"
SCRIPT = "uname -m; uname -r; exit 3"


@pytest.fixture
def kernel_release() -> str:
    """The other architecture's guest kernel release (its image must be built)."""
    try:
        return image.current(variant="minimal", arch=OTHER.name).kernel_release
    except Exception as exc:
        pytest.skip(f"no {OTHER.name} guest image ({exc})")


def archive(tmp_path: Path) -> Path:
    return busybox_archive(tmp_path / f"busybox-{OTHER.name}.tar", IMAGE, arch=OTHER.name)


def proof(out: bytes, kernel_release: str) -> None:
    assert out.decode().split() == [OTHER.uname, kernel_release], out
    assert kernel_release != os.uname().release


def test_ctr_run_with_platform(containerd: Any, tmp_path: Path, kernel_release: str) -> None:
    r = containerd.ctr("image", "import", "--platform", PLATFORM, str(archive(tmp_path)))
    assert r.returncode == 0, r.stderr
    r = containerd.ctr("run", "--rm", "--platform", PLATFORM, "--runtime", RUNTIME, IMAGE,
                       "o1", "sh", "-c", SCRIPT)  # fmt: skip
    assert r.returncode == 3, r.stderr
    proof(r.stdout, kernel_release)
    # Detached: the task's PID is its VM's QEMU, the other architecture's.
    r = containerd.ctr("run", "-d", "--platform", PLATFORM, "--runtime", RUNTIME, IMAGE, "o2",
                       "sleep", "600")  # fmt: skip
    assert r.returncode == 0, r.stderr
    try:
        rows = containerd.ctr("task", "ls").stdout.decode().splitlines()
        pid = int(next(row.split()[1] for row in rows if row.startswith("o2 ")))
        assert os.readlink(f"/proc/{pid}/exe").endswith(f"/qemu-system-{OTHER.uname}")
        r = containerd.ctr("task", "exec", "--exec-id", "e1", "o2", "uname", "-m")
        assert r.stdout.decode().strip() == OTHER.uname, r.stderr
    finally:
        containerd.ctr("task", "kill", "-s", "SIGKILL", "o2")
        containerd.ctr("task", "delete", "-f", "o2")
        containerd.ctr("container", "delete", "o2")


def test_docker_run_with_platform(
    containerd: Any,
    tmp_path: Path,
    cli_env: dict[str, str],
    runvm_binary: str,
    kernel_release: str,
) -> None:
    with docker_client(containerd, tmp_path, cli_env, runvm_binary, []) as docker:
        docker_tar = tmp_path / f"busybox-docker-{OTHER.name}.tar"
        r = subprocess.run(["skopeo", "copy", f"oci-archive:{archive(tmp_path)}",
                            f"docker-archive:{docker_tar}:{IMAGE}"], capture_output=True,
                           env=cli_env, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert docker("load", "-i", str(docker_tar)).returncode == 0
        r = docker("run", "--rm", "--runtime", "runvm", "--platform", PLATFORM, "--network",
                   "none", IMAGE, "sh", "-c", SCRIPT)  # fmt: skip
        assert r.returncode == 3, r.stderr
        proof(r.stdout, kernel_release)


def test_podman_run_with_arch(
    tmp_path: Path, cli_env: dict[str, str], runvm_binary: str, kernel_release: str
) -> None:
    with podman_client(tmp_path, cli_env, runvm_binary, []) as podman:
        assert podman("load", "-i", str(archive(tmp_path))).returncode == 0
        r = podman("run", "--rm", "--arch", OTHER.name, "--network", "none", IMAGE, "sh", "-c",
                   SCRIPT)  # fmt: skip
        assert r.returncode == 3, r.stderr
        proof(r.stdout, kernel_release)


def test_a_container_of_another_architecture_than_the_configured_one_is_refused(
    tmp_path: Path, cli_env: dict[str, str], kernel_release: str
) -> None:
    """With hypervisor.arch fixed to the host's, an other-architecture container is refused
    before any VM starts, naming both architectures; nothing is left behind."""
    from runvm.image.busybox import make_bundle

    add_config(Path(cli_env["RUNVM_CONFIG"]), f'[hypervisor]\narch = "{arches.host().name}"\n')
    make_bundle(tmp_path / "b", ["uname", "-m"], arch=OTHER.name)
    r = subprocess.run([sys.executable, "-m", "runvm.cli.main", "--root",
                        cli_env["RUNVM_TEST_ROOT"], "run", "-b", str(tmp_path / "b"), "x"],
                       env=cli_env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0
    assert (f"container x is built for {OTHER.name} (its program /bin/uname), but this runvm's "
            f"guests are {arches.host().name} (hypervisor.arch)") in r.stderr  # fmt: skip


def test_runvm_check_says_how_each_architecture_runs(
    tmp_path: Path, accel_cache: Path, kernel_release: str
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'[runtime]\ncache_dir = "{accel_cache}"\n')
    env = {**os.environ, "RUNVM_CONFIG": str(conf)}
    check = [sys.executable, "-m", "runvm.cli.main", "check"]
    r = subprocess.run([*check, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    import json

    report = json.loads(r.stdout)
    assert report["arch"] == arches.host().name and set(report["guests"]) == {"amd64", "arm64"}
    other = report["guests"][OTHER.name]
    assert other["ok"] and other["qemu"]["path"].endswith(f"qemu-system-{OTHER.uname}")
    assert other["accelerator"]["accel"] == "tcg"
    assert other["accelerator"]["kvm"] == f"not for {OTHER.name} guests"
    text = subprocess.run(check, env=env, capture_output=True, text=True, timeout=120).stdout
    assert (f"{OTHER.name}: tcg (KVM not for {OTHER.name} guests: an {OTHER.name} guest on an "
            f"{arches.host().name} host is emulated)") in text  # fmt: skip


def test_demo_of_the_other_architecture(cli_env: dict[str, str], kernel_release: str) -> None:
    r = subprocess.run([sys.executable, "-m", "runvm.cli.main", "demo", "--arch", OTHER.name],
                       env=cli_env, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"kernel seen inside:  {kernel_release} {OTHER.uname}\n" in r.stdout
    assert "guest agent:         0.1.0, instance " in r.stdout
    assert f"accelerator:         tcg (KVM not for {OTHER.name} guests" in r.stdout


def test_each_architecture_clones_its_own_template_made_on_first_use(
    tmp_path: Path, cli_env: dict[str, str], first_use: Path, kernel_release: str
) -> None:
    """On the defaults (templates made on first use) a pod of each architecture clones a
    template of its own; the clone of the other architecture runs, execs and grows (vCPUs
    onlined, virtio-mem) as the host's does."""
    from runvm.image.busybox import make_bundle

    names = {arches.host().name: "h1", OTHER.name: "o1"}
    for arch, name in names.items():
        make_bundle(tmp_path / name, ["sleep", "600"], arch=arch)
        create = [sys.executable, "-m", "runvm.cli.main", "--root", cli_env["RUNVM_TEST_ROOT"],
                  "create", "--bundle", str(tmp_path / name), name]  # fmt: skip
        with (tmp_path / f"{name}.log").open("wb") as log:  # the monitor keeps its stdio
            r = subprocess.run(create, env=cli_env, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=log, timeout=300)  # fmt: skip
        assert r.returncode == 0, (tmp_path / f"{name}.log").read_text()
    try:
        made = templates_in(first_use)
        assert len(made) == 2, made
        argv = {name: clone_argv(name) for name in names.values()}
        for arch, name in names.items():
            assert argv[name].startswith(f"/usr/bin/qemu-system-{arches.get(arch).uname} ")
            assert "-incoming defer" in argv[name]
        assert {a.split("mem-path=")[1].split("/memory")[0] for a in argv.values()} == {
            str(first_use / m) for m in made}  # fmt: skip
        runvm_cli(cli_env, "start", "o1")
        assert runvm_cli(cli_env, "exec", "o1", "uname", "-mr").stdout.split() == [
            kernel_release, OTHER.uname]  # fmt: skip
        check_clone_grows(cli_env, "o1")
    finally:
        for name in names.values():
            runvm_cli(cli_env, "delete", "--force", name, ok=False)
