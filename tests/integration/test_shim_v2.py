"""containerd's runtime v2 with runvm's own shim: ``ctr run --runtime io.containerd.runvm.v2``.

Every test drives a private containerd (own config, root, state and sockets) that finds
``containerd-shim-runvm-v2`` on its PATH, with a busybox image built here and imported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from runvm.image.ociarchive import busybox_archive

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

RUNTIME = "io.containerd.runvm.v2"
IMAGE = "localhost/runvm/busybox:latest"


@pytest.fixture
def image(containerd: Any, tmp_path: Path) -> str:
    archive = busybox_archive(tmp_path / "busybox.tar", IMAGE)
    r = containerd.ctr("image", "import", str(archive))
    assert r.returncode == 0, r.stderr
    return IMAGE


def test_ctr_run_prints_output_and_exit_code(containerd: Any, image: str) -> None:
    r = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "c1",
                       "sh", "-c", "echo hi; echo err >&2; exit 7")  # fmt: skip
    assert r.stdout == b"hi\n", r.stderr
    assert b"err\n" in r.stderr
    assert r.returncode == 7
    assert containerd.ctr("container", "ls", "-q").stdout.strip() == b""


def wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return value


def task_row(containerd: Any, task_id: str) -> list[str]:
    """``ctr task ls`` columns (TASK PID STATUS) of one task, [] if it is not listed."""
    for line in containerd.ctr("task", "ls").stdout.decode().splitlines()[1:]:
        cols = line.split()
        if cols and cols[0] == task_id:
            return cols
    return []


def ctr_on_terminal(containerd: Any, *args: str, answer: bytes = b"") -> tuple[bytes, int]:
    """Run ctr on a new pseudo-terminal (for ``-t``); returns (output, exit code)."""
    import os
    import pty
    import select

    pid, master = pty.fork()
    if pid == 0:
        os.execvp("ctr", ["ctr", "--address", containerd.address, *args])
    out = b""
    deadline = time.monotonic() + 120
    if answer:
        os.write(master, answer)
    while True:
        assert time.monotonic() < deadline, out
        readable, _, _ = select.select([master], [], [], 1)
        if readable:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(master)
    return out, os.waitstatus_to_exitcode(status)


def test_detached_task_exec_ps_metrics_pause_kill_delete(containerd: Any, image: str) -> None:
    events = containerd.events()
    script = 'trap "echo bye; exit 9" TERM; echo up; while :; do sleep 0.2; done'
    r = containerd.ctr("run", "-d", "--runtime", RUNTIME, image, "bg1", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    try:
        pid = int(task_row(containerd, "bg1")[1])
        assert task_row(containerd, "bg1")[2] == "RUNNING"
        assert "qemu-system" in Path(f"/proc/{pid}/cmdline").read_text()  # the task is its VM

        r = containerd.ctr("task", "exec", "--exec-id", "e1", "bg1", "sh", "-c",
                           "echo exec-out; cat /etc/hostname >/dev/null; exit 3")  # fmt: skip
        assert (r.stdout, r.returncode) == (b"exec-out\n", 3), r.stderr

        out, code = ctr_on_terminal(containerd, "task", "exec", "-t", "--exec-id", "e2", "bg1",
                                    "sh", "-c", "tty; exit 4")  # fmt: skip
        assert b"/dev/pts/" in out and code == 4, out

        r = containerd.ctr("task", "ps", "bg1")
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.decode().split()) >= 4, r.stdout  # PID INFO header + sh + sleep

        r = containerd.ctr("task", "metrics", "bg1")
        assert r.returncode == 0, r.stderr
        rows = dict(line.split()[:2] for line in r.stdout.decode().splitlines()
                    if len(line.split()) >= 2)  # fmt: skip
        assert int(rows["memory.usage"]) > 0 and int(rows["pids.current"]) >= 2, r.stdout

        assert containerd.ctr("task", "pause", "bg1").returncode == 0
        assert task_row(containerd, "bg1")[2] == "PAUSED"
        assert containerd.ctr("task", "resume", "bg1").returncode == 0
        assert task_row(containerd, "bg1")[2] == "RUNNING"

        r = containerd.ctr("task", "kill", "-s", "SIGTERM", "bg1")
        assert r.returncode == 0, r.stderr
        wait_for("the task to stop", lambda: task_row(containerd, "bg1")[2:3] == ["STOPPED"])
        r = containerd.ctr("task", "delete", "bg1")
        assert r.returncode == 0, r.stderr
    finally:
        containerd.ctr("task", "delete", "-f", "bg1")
        containerd.ctr("container", "delete", "bg1")
    topics = events.topics("bg1")
    expected = ["/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started",
                "/tasks/exit", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit",
                "/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/delete"]  # fmt: skip
    assert topics == expected, topics
    assert events.field("bg1", "/tasks/exit")[-1].get("exit_status") == 9
