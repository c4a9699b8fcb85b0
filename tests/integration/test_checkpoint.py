"""runvm checkpoint and restore through the runc verbs: a counter container (a number written
to its rootfs every 100 ms, a file held open) goes on from its value after checkpoint, kill
and restore, in a new VM; with --leave-running both copies run; a restore on a fresh state
root (another host's) works; bad checkpoints and requests are refused, naming why, and leave
nothing behind. Real QEMU, guest kernel and CRIU in the guest."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from test_lifecycle import RUNVM, Cli, bundle, poll
from test_podman_docker import IMAGE, podman_client

from runvm.image.ociarchive import busybox_archive

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

# Counts in /count (rewritten by rename: never read half written), and holds /held open.
COUNTER = ("i=0; exec 3>/held; while :; do i=$((i+1)); echo $i > /count.new; "
           "mv /count.new /count; echo $i >&3; sleep 0.1; done")  # fmt: skip


def counter(tmp: Path) -> Path:
    """A bundle of the counter, its rootfs writable."""
    return bundle(tmp, COUNTER, root={"path": "rootfs", "readonly": False})


def count(rootfs: Path) -> int:
    try:
        return int((rootfs / "count").read_text())
    except (OSError, ValueError):
        return 0


def counting(rootfs: Path, above: int, timeout: float = 120) -> int:
    poll(lambda: count(rootfs) > above, timeout, f"the count past {above}")
    return count(rootfs)


def restore(cli: Cli, *args: str, ok: bool = True) -> tuple[int, str]:
    """``runvm restore ARGS`` with a file as stdout (the monitor keeps it, as create's)."""
    out, err = cli.tmp / "restore.out", cli.tmp / "restore.err"
    with out.open("ab") as o, err.open("wb") as e:
        r = subprocess.run([*RUNVM, "--root", str(cli.root), "restore", *args], env=cli.env,
                           stdin=subprocess.DEVNULL, stdout=o, stderr=e, timeout=180)  # fmt: skip
    said = err.read_text()
    assert not ok or r.returncode == 0, f"restore {args}: {said}"
    return r.returncode, said


def gone(cli: Cli, cid: str) -> None:
    cli.fails("state", cid, expect="does not exist")


def test_checkpoint_kill_restore_continues_the_count(tmp_path: Path,
                                                     cli_env: dict[str, str]) -> None:  # fmt: skip
    cli = Cli(tmp_path, cli_env)
    b = counter(tmp_path)
    rootfs = b / "rootfs"
    cli.create(b, "cr1")
    cli("start", "cr1")
    counting(rootfs, 5)
    images = tmp_path / "ckpt"
    cli("checkpoint", "--image-path", str(images), "cr1")
    gone(cli, "cr1")  # as with runc: the checkpointed container is no more
    at = count(rootfs)
    time.sleep(0.5)
    assert count(rootfs) == at, "the count went on after the checkpoint"
    assert (images / "inventory.img").is_file() and (images / "runvm.json").is_file()
    meta = json.loads((images / "runvm.json").read_text())
    assert meta["container"] == "cr1" and meta["kernel_release"] and meta["criu"]
    assert (images / "dump.log").is_file()  # CRIU's log in the work directory (the images')

    restore(cli, "--image-path", str(images), "--bundle", str(b), "--detach", "cr1")
    assert json.loads(cli("state", "cr1").stdout)["status"] == "running"
    after = counting(rootfs, at + 3)
    assert after > at + 3  # from its value, not from zero: it never wrote a smaller one
    held = rootfs / "held"
    numbers = [int(n) for n in held.read_text().split()]
    assert numbers == list(range(1, len(numbers) + 1)), "the held file lost its place"
    cli("kill", "cr1", "KILL")
    cli.wait_status("cr1", "stopped")
    cli("delete", "cr1")


def test_leave_running_and_a_restore_elsewhere(tmp_path: Path, cli_env: dict[str, str],
                                               accel_cache: Path) -> None:  # fmt: skip
    cli = Cli(tmp_path, cli_env)
    b = counter(tmp_path)
    cli.create(b, "cr2")
    cli("start", "cr2")
    counting(b / "rootfs", 5)
    images = tmp_path / "ckpt2"
    # Paused, so that the copy of its rootfs below is the one the checkpoint saw (CRIU checks
    # the files a restored process has open: the held file must be as it was).
    cli("pause", "cr2")
    cli("checkpoint", "--leave-running", "--image-path", str(images), "cr2")
    assert json.loads(cli("state", "cr2").stdout)["status"] == "paused"
    other = tmp_path / "other"
    other.mkdir()
    copy = other / "bundle"
    shutil.copytree(b, copy, symlinks=True)
    cli("resume", "cr2")
    at = json.loads((images / "runvm.json").read_text())
    assert at["container"] == "cr2"
    mark = count(b / "rootfs")
    counting(b / "rootfs", mark + 3)  # the original goes on

    # The copy: its own bundle, another state root, as on another host with the same runvm
    # and guest image.
    elsewhere = Path(f"{cli_env['RUNVM_TEST_ROOT']}-elsewhere")
    state = Path(tempfile.mkdtemp(prefix="rvs-", dir="/tmp"))  # short: it holds sockets
    conf = write_config(tmp_path / "elsewhere.toml", state, accel_cache)
    env = {**cli_env, "RUNVM_CONFIG": str(conf), "RUNVM_TEST_ROOT": str(elsewhere)}
    there = Cli(other, env)
    try:
        restore(there, "--image-path", str(images), "--bundle", str(copy), "-d", "cr2-copy")
        counting(copy / "rootfs", count(copy / "rootfs") + 3)
        counting(b / "rootfs", count(b / "rootfs") + 2)  # both run
    finally:
        for c, cid in ((there, "cr2-copy"), (cli, "cr2")):
            c("delete", "--force", cid, ok=False)
        shutil.rmtree(state, ignore_errors=True)


def corrupt(images: Path, how: str) -> str:
    """Damage a finished checkpoint; returns what the refusal must say."""
    pages = max((p for p in images.glob("pages-*.img")), key=lambda p: p.stat().st_size)
    if how == "missing":
        shutil.rmtree(images)
        return "no such directory"
    if how == "unfinished":
        (images / "runvm.json").unlink()
        return "no runvm.json"
    if how == "truncated":
        with pages.open("r+b") as f:
            f.truncate(pages.stat().st_size // 2)
        return f"{pages.name} is {pages.stat().st_size} bytes"
    if how == "tampered":
        data = bytearray(pages.read_bytes())
        data[len(data) // 2] ^= 0xFF
        pages.write_bytes(bytes(data))
        return f"{pages.name} does not match its checksum"
    meta = json.loads((images / "runvm.json").read_text())
    meta["kernel_release"] = "0.0.0-other"
    (images / "runvm.json").write_text(json.dumps(meta))
    return "made by guest kernel '0.0.0-other'"


def test_bad_checkpoints_and_requests_are_refused(tmp_path: Path,
                                                  cli_env: dict[str, str]) -> None:  # fmt: skip
    cli = Cli(tmp_path, cli_env)
    b = counter(tmp_path)
    cli.create(b, "cr3")
    said = cli.fails("checkpoint", "--image-path", str(tmp_path / "no"), "cr3",
                     expect="not allowed in state 'created'")  # fmt: skip
    assert not (tmp_path / "no").exists(), said
    cli("start", "cr3")
    counting(b / "rootfs", 3)
    images = tmp_path / "good"
    cli("checkpoint", "--leave-running", "--image-path", str(images), "cr3")
    code, said = restore(cli, "--image-path", str(images), "--bundle", str(b), "-d", "cr3",
                         ok=False)  # the id is taken  # fmt: skip
    assert code == 1 and "exists" in said, said
    cli.fails("checkpoint", "--pre-dump", "cr3", expect="--pre-dump is not supported")
    for how in ("unfinished", "truncated", "tampered", "other-kernel", "missing"):
        damaged = tmp_path / f"bad-{how}"
        shutil.copytree(images, damaged)
        reason = corrupt(damaged, how)
        code, said = restore(cli, "--image-path", str(damaged), "--bundle", str(b), "-d",
                             f"r-{how}", ok=False)  # fmt: skip
        assert code == 1 and reason in said, (how, said)
        gone(cli, f"r-{how}")
    cli("kill", "cr3", "KILL")
    cli.wait_status("cr3", "stopped")
    cli("delete", "cr3")


# --- through Podman -------------------------------------------------------------------------
@pytest.fixture
def podman(tmp_path: Path, cli_env: dict[str, str], runvm_binary: str) -> Iterator[Any]:
    with podman_client(tmp_path, cli_env, runvm_binary, []) as call:
        yield call


def podman_count(podman: Any, name: str) -> int:
    r = podman("exec", name, "cat", "/count")
    return int(r.stdout) if r.returncode == 0 and r.stdout.strip().isdigit() else 0


def test_podman_checkpoint_export_and_import_under_another_name(
    podman: Any, tmp_path: Path
) -> None:
    r = podman("run", "-d", "--name", "cnt", "--network", "none", IMAGE, "sh", "-c", COUNTER)
    assert r.returncode == 0, r.stderr
    poll(lambda: podman_count(podman, "cnt") > 5, 120, "the count in Podman's container")
    archive = tmp_path / "cnt.tar.zst"
    r = podman("container", "checkpoint", "--export", str(archive), "cnt")
    assert r.returncode == 0, r.stderr
    state = podman("inspect", "--format", "{{.State.Status}}", "cnt").stdout.strip()
    assert state == b"exited", state
    r = podman("cp", "cnt:/count", str(tmp_path / "count-at-checkpoint"))
    assert r.returncode == 0, r.stderr
    at = int((tmp_path / "count-at-checkpoint").read_text())
    assert podman("rm", "cnt").returncode == 0
    r = podman("container", "restore", "--import", str(archive), "--name", "cnt2")
    assert r.returncode == 0, r.stderr
    first = podman_count(podman, "cnt2")
    assert first >= at, (first, at)  # from where it was, not from zero
    poll(lambda: podman_count(podman, "cnt2") > at + 3, 120, "the restored count")
    assert podman("rm", "-f", "cnt2").returncode == 0


# --- through containerd -------------------------------------------------------------------------
RUNTIME = "io.containerd.runvm.v2"
CTR_IMAGE = "localhost/runvm/busybox:latest"


def ctr_count(containerd: Any, name: str) -> int:
    r = containerd.ctr("task", "exec", "--exec-id", f"c{time.monotonic_ns()}", name, "cat",
                       "/count")  # fmt: skip
    return int(r.stdout) if r.returncode == 0 and r.stdout.strip().isdigit() else 0


def test_containerd_checkpoint_and_restore(containerd: Any, tmp_path: Path) -> None:
    archive = busybox_archive(tmp_path / "busybox.tar", CTR_IMAGE)
    assert containerd.ctr("image", "import", str(archive)).returncode == 0
    r = containerd.ctr("run", "-d", "--runtime", RUNTIME, CTR_IMAGE, "cnt", "sh", "-c", COUNTER)
    assert r.returncode == 0, r.stderr
    poll(lambda: ctr_count(containerd, "cnt") > 5, 120, "the count in containerd's task")
    before = ctr_count(containerd, "cnt")
    # The task is paused for it, and goes on after (the checkpoint keeps it running).
    r = containerd.ctr("containers", "checkpoint", "--task", "--rw", "cnt", "localhost/ckpt:1")
    assert r.returncode == 0, r.stderr
    assert ctr_count(containerd, "cnt") >= before
    containerd.ctr("task", "kill", "-s", "KILL", "cnt")
    poll(lambda: containerd.ctr("task", "delete", "cnt").returncode == 0, 30, "the task's end")
    assert containerd.ctr("containers", "delete", "cnt").returncode == 0

    r = containerd.ctr("containers", "restore", "--live", "--rw", "cnt2", "localhost/ckpt:1")
    assert r.returncode == 0, r.stderr
    first = ctr_count(containerd, "cnt2")
    assert first >= before, (first, before)  # where it was, not from zero
    poll(lambda: ctr_count(containerd, "cnt2") > first + 3, 120, "the restored count")
    containerd.ctr("task", "kill", "-s", "KILL", "cnt2")
    poll(lambda: containerd.ctr("task", "delete", "cnt2").returncode == 0, 30, "the task's end")
    assert containerd.ctr("containers", "delete", "cnt2").returncode == 0
