"""VM templates: sandboxes cloned from a saved template VM (real QEMU, real migration)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TEMPLATES, add_config, runvm_cli, start_write_exec

from runvm import config as cfg
from runvm.image.busybox import make_bundle
from runvm.image.ociarchive import busybox_archive
from runvm.runtime import template
from runvm.runtime.container import Container
from runvm.runtime.sandbox import Sandbox, SandboxOptions

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

RUNVM = [sys.executable, "-m", "runvm.cli.main"]
IMAGE = "localhost/runvm/busybox:latest"

cli = runvm_cli


def test_a_cloned_sandbox_runs_a_container(
    tmp_path: Path, cli_env: dict[str, str], factory: Path
) -> None:
    """Create, start, exec (output and exit code), rootfs writes, kill, delete — in a clone."""
    status = json.loads(cli(cli_env, "factory", "status").stdout)
    assert status["template"] == str(factory) and status["state_bytes"] > 0
    b = tmp_path / "bundle"
    spec = make_bundle(b, ["sh", "-c", "echo hi > /written; sleep 60"])
    spec["root"]["readonly"] = False
    (b / "config.json").write_text(json.dumps(spec))
    with (tmp_path / "out").open("wb") as out:
        subprocess.run([*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "create", "--bundle",
                        str(b), "clone1"], env=cli_env, stdin=subprocess.DEVNULL, stdout=out,
                       stderr=out, check=True, timeout=180)  # fmt: skip
    try:
        ps = subprocess.run(["ps", "-ewwo", "args"], capture_output=True, text=True).stdout
        qemu = [a for a in ps.splitlines() if "qemu-system" in a and "runvm-clone1" in a]
        assert qemu and "-incoming defer" in qemu[0] and f"mem-path={factory}/memory" in qemu[0]
        assert "share=off" in qemu[0] and "virtio-9p" in qemu[0]
        start_write_exec(cli_env, "clone1", b)
        check_clone_grows(cli_env, "clone1")
    finally:
        cli(cli_env, "kill", "clone1", "KILL", ok=False)
        cli(cli_env, "delete", "--force", "clone1", ok=False)
    assert (b / "rootfs/written").read_text() == "hi\n"


def check_clone_grows(env: dict[str, str], name: str) -> None:
    """A clone has its template's base size and grows as a cold VM does: 1 CPU and 512 MiB
    more after an update to those limits."""
    probe = ["exec", name, "sh", "-c", "nproc; awk '/MemTotal/ {print $2}' /proc/meminfo"]
    cpus, kib = map(int, cli(env, *probe).stdout.split())
    cli(env, "update", "--memory", str(512 << 20), "--cpu-quota", "100000", name)
    grown_cpus, grown_kib = map(int, cli(env, *probe).stdout.split())
    assert grown_cpus == cpus + 1 and 500 * 1024 <= grown_kib - kib <= 520 * 1024, (
        (cpus, kib), (grown_cpus, grown_kib))  # fmt: skip


async def _clone_facts(config: cfg.RunvmConfig, bundle: Path, name: str) -> dict[str, object]:
    sandbox = await Sandbox.start(name, config, SandboxOptions(hostname=name))
    try:
        assert sandbox.templated and sandbox.details is not None and sandbox.agent is not None
        container = await Container.create(sandbox, name, bundle, stdin=False)
        await container.start()
        await sandbox.agent.wait_process(name)
        out = await sandbox.agent.read_stream("stdout", name)
        await container.remove()
        return {"instance": sandbox.details.instance_id, "out": out.decode().split()}
    finally:
        await sandbox.stop()


def test_clones_differ_in_randomness_and_identity_and_keep_time(
    tmp_path: Path, factory: Path, cli_env: dict[str, str]
) -> None:
    config = cfg.load(Path(cli_env["RUNVM_CONFIG"]))
    bundle = tmp_path / "bundle"
    make_bundle(bundle, ["sh", "-c", "od -An -tx1 -N16 /dev/urandom | tr -d ' '; date +%s"])
    facts = [asyncio.run(_clone_facts(config, bundle, f"rng{i}")) for i in range(2)]
    assert facts[0]["instance"] != facts[1]["instance"]
    randoms = [f["out"][0] for f in facts]  # type: ignore[index]
    assert randoms[0] != randoms[1] and all(len(r) == 32 for r in randoms), facts
    for f in facts:
        assert abs(int(f["out"][1]) - time.time()) < 30, f  # type: ignore[index]


def test_a_template_that_does_not_match_is_refused(
    tmp_path: Path, factory: Path, cli_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Other memory size than the template's: the sandbox boots cold and says why."""
    config = cfg.load(Path(cli_env["RUNVM_CONFIG"]))
    bigger = dataclasses.replace(config, hypervisor=dataclasses.replace(
        config.hypervisor, memory_mib=config.hypervisor.memory_mib + 64))  # fmt: skip

    async def boot() -> bool:
        sandbox = await Sandbox.start("cold", bigger, SandboxOptions(hostname="cold"))
        try:
            return sandbox.templated
        finally:
            await sandbox.stop()

    with caplog.at_level(logging.WARNING, logger=template.__name__):
        assert asyncio.run(boot()) is False
    assert any("refused (it differs in memory_mib" in r.getMessage() for r in caplog.records)


def test_factory_refuses_a_machine_without_hot_plug(cli_env: dict[str, str]) -> None:
    add_config(Path(cli_env["RUNVM_CONFIG"]), '[hypervisor]\nmachine = "microvm"\n')
    r = subprocess.run([*RUNVM, "factory", "init"], env=cli_env, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode != 0 and "machine microvm has none" in r.stderr, r.stderr


@pytest.fixture
def first_use(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[Path]:
    """The shipped default: templates on, made on first use, here in a directory of this
    test's own on /dev/shm (removed after it)."""
    directory = Path(TEMPLATES).parent / f"first-use-{tmp_path.name}"
    add_config(Path(cli_env["RUNVM_CONFIG"]),
               f'[factory]\nenable = true\ntemplates_dir = "{directory}"\n')  # fmt: skip
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def templates_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != ".lock")


def clone_argv(name: str) -> str:
    ps = subprocess.run(["ps", "-ewwo", "args"], capture_output=True, text=True).stdout
    found = [a for a in ps.splitlines() if "qemu-system" in a and f"runvm-{name}" in a]
    assert len(found) == 1, ps
    return found[0]


def test_racing_first_starts_make_one_template_and_both_are_clones(
    tmp_path: Path, cli_env: dict[str, str], first_use: Path
) -> None:
    bundles = []
    for name in ("race1", "race2"):
        b = tmp_path / name
        make_bundle(b, ["sleep", "60"])
        bundles.append(b)
    logs = [(tmp_path / f"{b.name}.log").open("wb") for b in bundles]  # (the monitors keep
    creates = [subprocess.Popen([*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "create",
                                 "--bundle", str(b), b.name], env=cli_env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
               for b, log in zip(bundles, logs, strict=True)]  # fmt: skip
    try:  # their stdio open: a pipe would never end)
        for proc, log in zip(creates, logs, strict=True):
            proc.wait(timeout=300)
            log.close()
            assert proc.returncode == 0, Path(log.name).read_text()
        made = templates_in(first_use)
        assert len(made) == 1 and len(made[0]) == 16, made
        for b in bundles:
            argv = clone_argv(b.name)
            assert "-incoming defer" in argv and f"mem-path={first_use / made[0]}/memory" in argv
        cli(cli_env, "start", "race1")
        assert cli(cli_env, "exec", "race1", "echo", "in a clone").stdout == "in a clone\n"
    finally:
        for b in bundles:
            cli(cli_env, "delete", "--force", b.name, ok=False)


def test_another_config_gets_its_own_template_and_a_killed_maker_leaves_none_behind(
    tmp_path: Path, cli_env: dict[str, str], first_use: Path
) -> None:
    conf = Path(cli_env["RUNVM_CONFIG"])
    b = tmp_path / "bundle"
    make_bundle(b, ["true"])
    run = [*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "run", "--bundle", str(b)]
    r = subprocess.run([*run, "one"], env=cli_env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    first = templates_in(first_use)
    assert len(first) == 1
    add_config(conf, "[hypervisor]\nmemory_mib = 320\n")
    # kill -9 the process making the second configuration's template, mid-way
    maker = subprocess.Popen([*run, "killed"], env=cli_env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (begun := list(first_use.glob("*.new-*"))):
        assert maker.poll() is None and time.monotonic() < deadline, "no template was begun"
        time.sleep(0.05)
    time.sleep(1.0)  # its template VM is booting
    os.kill(int(begun[0].name.rpartition("-")[2]), signal.SIGKILL)  # the process making it
    os.killpg(maker.pid, signal.SIGKILL)
    maker.wait()
    cli(cli_env, "delete", "--force", "killed")  # what the killed create had made goes
    assert not (Path(cli_env["RUNVM_TEST_ROOT"]) / "killed").exists()
    r = subprocess.run([*run, "two"], env=cli_env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    second = templates_in(first_use)
    assert len(second) == 2 and first[0] in second, second
    assert not any(".new-" in name or name.endswith(".failed") for name in second)
    ps = subprocess.run(["ps", "-ewwo", "args"], capture_output=True, text=True).stdout
    assert str(first_use) not in ps  # the killed maker's template VM went with it


def test_ctr_run_on_the_defaults_clones_a_template_made_on_first_use(
    containerd: Any, tmp_path: Path
) -> None:
    conf = Path(containerd.env["RUNVM_CONFIG"])
    directory = Path(TEMPLATES).parent / f"first-use-{tmp_path.name}"
    add_config(conf, f'[factory]\nenable = true\ntemplates_dir = "{directory}"\n')
    try:
        containerd.ctr("image", "import", str(busybox_archive(tmp_path / "bb.tar", IMAGE)))
        for name in ("ctr1", "ctr2"):
            r = containerd.ctr("run", "--rm", "--runtime", "io.containerd.runvm.v2", IMAGE, name,
                               "sh", "-c", "echo from $(hostname); exit 3")  # fmt: skip
            assert r.returncode == 3 and r.stdout == f"from {name}\n".encode(), r.stderr
        made = templates_in(directory)
        assert len(made) == 1, made
        assert containerd.ctr("container", "ls", "-q").stdout.strip() == b""
    finally:
        shutil.rmtree(directory, ignore_errors=True)
