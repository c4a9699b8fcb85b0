"""containerd's runtime v2 with runvm's own shim: ``ctr run --runtime io.containerd.runvm.v2``.

Every test drives a private containerd (own config, root, state and sockets) that finds
``containerd-shim-runvm-v2`` on its PATH, with a busybox image built here and imported.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import add_config, own_processes

from runvm.image.busybox import make_bundle
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
        cols: list[str] = line.split()
        if cols and cols[0] == task_id:
            return cols
    return []


def ctr_on_terminal(containerd: Any, *args: str, answer: bytes = b"") -> tuple[bytes, int]:
    """Run ctr on a new 33x111 pseudo-terminal (for ``-t``); returns (output, exit code)."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios

    pid, master = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
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


def test_stdin_reaches_the_task_and_no_output_is_lost(containerd: Any, image: str) -> None:
    r = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "io1", "sh", "-c",
                       "read x; echo got-$x; seq 1 30000; exit 3", input=b"piped-in\n")  # fmt: skip
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "got-piped-in", r.stderr
    assert lines[1:] == [str(i) for i in range(1, 30001)]
    assert r.returncode == 3


def test_oom_event_and_config_from_runtime_options(
    containerd: Any, image: str, tmp_path: Path, accel_cache: Path
) -> None:
    import shutil
    import tempfile

    other_root = Path(tempfile.mkdtemp(prefix="rvo-", dir="/tmp"))
    config = tmp_path / "small.toml"
    config.write_text(f'[runtime]\nstate_root = "{other_root}"\ncache_dir = "{accel_cache}"\n'
                      "[hypervisor]\nmemory_mib = 400\n"
                      "[factory]\nenable = false\n")  # (never the machine's templates)  # fmt: skip
    events = containerd.events()
    try:
        r = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--runtime-config-path",
                           str(config), "--memory-limit", str(32 << 20), image, "oom1", "sh",
                           "-c", "grep MemTotal /proc/meminfo; "
                           "dd if=/dev/zero of=/dev/null bs=128M count=1")  # fmt: skip
        mem_kib = int(r.stdout.split()[1])
        # The options' config (400 MiB; the default is 256) plus the 32 MiB limit (sizing).
        assert 400 * 1024 < mem_kib < 432 * 1024, r.stdout
        assert r.returncode == 137, r.stderr  # killed by the OOM killer (SIGKILL)
        wait_for("the oom event", lambda: events.topics("oom1").count("/tasks/oom"), 20)
        topics = events.topics("oom1")
        assert topics[0] == "/tasks/create" and topics[-1] == "/tasks/delete", topics
        wait_for("the shim to clean up", lambda: not [p for p in other_root.rglob("*")
                                                      if not p.is_dir()], 20)  # fmt: skip
    finally:
        shutil.rmtree(other_root, ignore_errors=True)


def update_memory_limit(state_root: Path, task_id: str, limit: int) -> None:
    import asyncio
    import json

    from google.protobuf import any_pb2

    from runvm.shim import shim_api_pb2 as spb
    from runvm.shim import wire
    from runvm.ttrpc import Client

    record = json.loads((state_root / "k" / "default" / f"{task_id}.json").read_text())
    resources = any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
        value=json.dumps({"memory": {"limit": limit}}).encode(),
    )
    request = spb.UpdateTaskRequest(id=task_id, resources=resources)

    async def call() -> None:
        client = await Client.connect_unix(record["socket"])
        try:
            await client.call(wire.TASK_SERVICE, "Update", request.SerializeToString(), timeout=30)
        finally:
            await client.close()

    asyncio.run(call())


def test_detached_task_exec_ps_metrics_pause_kill_delete(
    containerd: Any, image: str, state_root: Path
) -> None:
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

        # ctr sends the terminal's size (ResizePty) only after the exec started, so the shell
        # may run before it arrives (a 0x0 pty, as under runc): it waits for a size.
        sized = (
            "tty; for i in $(seq 100); do stty size 2>/dev/null | grep -q . && break; "
            "sleep 0.1; done"
        )
        out, code = ctr_on_terminal(containerd, "task", "exec", "-t", "--exec-id", "e2", "bg1",
                                    "sh", "-c", f"{sized}; stty size; exit 4")  # fmt: skip
        assert b"/dev/pts/" in out and code == 4, out
        assert b"33 111" in out, out  # ResizePty carried the client's terminal size

        r = containerd.ctr("task", "ps", "bg1")
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.decode().split()) >= 4, r.stdout  # PID INFO header + sh + sleep

        r = containerd.ctr("task", "metrics", "bg1")
        assert r.returncode == 0, r.stderr
        rows = dict(line.split()[:2] for line in r.stdout.decode().splitlines()
                    if len(line.split()) >= 2)  # fmt: skip
        assert int(rows["memory.usage"]) > 0 and int(rows["pids.current"]) >= 2, r.stdout

        # ctr 1.6 has no `task update`: call the shim's Update as containerd would.
        update_memory_limit(state_root, "bg1", 200000000)
        r = containerd.ctr("task", "metrics", "bg1")
        limit = next(int(ln.split()[1]) for ln in r.stdout.decode().splitlines()
                     if ln.startswith("memory.usage_limit"))  # fmt: skip
        assert 200000000 - 4096 < limit <= 200000000, r.stdout  # (the kernel rounds to pages)

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


SANDBOX = "io.kubernetes.cri.container-type=sandbox"
CONTAINER = "io.kubernetes.cri.container-type=container"


def pod_args(kind: str, sandbox_id: str) -> list[str]:
    return ["--annotation", kind, "--annotation", f"io.kubernetes.cri.sandbox-id={sandbox_id}"]


def exec_out(containerd: Any, task_id: str, exec_id: str, *cmd: str) -> str:
    r = containerd.ctr("task", "exec", "--exec-id", exec_id, task_id, *cmd)
    assert r.returncode == 0, r.stderr
    return str(r.stdout.decode().strip())


def procs_with(*needles: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if all(n in args for n in needles):
                found.append(int(entry.name))
    return found


def test_pod_containers_share_one_vm_and_one_shim(
    containerd: Any, image: str, state_root: Path
) -> None:
    run = ["run", "-d", "--runtime", RUNTIME]
    ids = ["s1", "a1", "a2"]
    try:
        r = containerd.ctr(*run, *pod_args(SANDBOX, "s1"), image, "s1", "sleep", "1000")
        assert r.returncode == 0, r.stderr
        vm_pid = int(task_row(containerd, "s1")[1])
        r = containerd.ctr(*run, *pod_args(CONTAINER, "s1"), "--with-ns",
                           f"uts:/proc/{vm_pid}/ns/uts", image, "a1", "sleep", "1000")  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = containerd.ctr(*run, *pod_args(CONTAINER, "s1"), image, "a2", "sleep", "1000")
        assert r.returncode == 0, r.stderr

        assert [int(task_row(containerd, i)[1]) for i in ids] == [vm_pid] * 3
        assert len(procs_with("qemu-system", str(state_root))) == 1
        assert len(procs_with("containerd-shim-runvm-v2", containerd.address)) == 1
        records = list((state_root / "k" / "default").glob("*.json"))
        assert len(records) == 1, records
        import json

        record = json.loads(records[0].read_text())
        assert record["tasks"] == sorted(ids) and record["agent_instance"]

        uts = {i: exec_out(containerd, i, f"u-{i}", "readlink", "/proc/self/ns/uts") for i in ids}
        assert uts["s1"] == uts["a1"] != uts["a2"], uts
        # Each container has its own root filesystem.
        exec_out(containerd, "a1", "touch", "touch", "/only-in-a1")
        r = containerd.ctr("task", "exec", "--exec-id", "ls", "s1", "ls", "/only-in-a1")
        assert r.returncode != 0

        # The VM outlives its app containers and stops with the last container.
        for task_id in ("a1", "a2"):
            containerd.ctr("task", "kill", "-s", "SIGKILL", task_id)
            wait_for("exit", lambda t=task_id: task_row(containerd, t)[2:3] == ["STOPPED"])
            assert containerd.ctr("task", "delete", task_id).returncode == 0
        assert exec_out(containerd, "s1", "still", "echo", "alive") == "alive"
        containerd.ctr("task", "kill", "-s", "SIGKILL", "s1")
        wait_for("exit", lambda: task_row(containerd, "s1")[2:3] == ["STOPPED"])
        assert containerd.ctr("task", "delete", "s1").returncode == 0
        wait_for("the VM to stop", lambda: not procs_with("qemu-system", str(state_root)))
    finally:
        for task_id in reversed(ids):
            containerd.ctr("task", "delete", "-f", task_id)
            containerd.ctr("container", "delete", task_id)


def test_pods_that_need_the_host_are_refused(containerd: Any, image: str) -> None:
    run = ["run", "--rm", "--runtime", RUNTIME]
    r = containerd.ctr(*run, "--net-host", *pod_args(SANDBOX, "h1"), image, "h1", "true")
    assert r.returncode != 0
    assert b"host network is not possible in a VM pod" in r.stderr, r.stderr
    r = containerd.ctr(*run, *pod_args(CONTAINER, "nosuchpod"), image, "o1", "true")
    assert r.returncode != 0
    assert b"pod sandbox nosuchpod has no running shim" in r.stderr, r.stderr
    r = containerd.ctr(*run, "--runtime-config-path", "/nonexistent/runvm.toml", image, "b1",
                       "true")  # fmt: skip
    assert r.returncode != 0
    assert b"/nonexistent/runvm.toml" in r.stderr, r.stderr
    for task_id in ("h1", "o1", "b1"):
        containerd.ctr("container", "delete", task_id)
    assert containerd.ctr("container", "ls", "-q").stdout.strip() == b""


def test_containerd_restart_then_shim_killed(containerd: Any, image: str, state_root: Path) -> None:
    r = containerd.ctr("run", "-d", "--runtime", RUNTIME, image, "r1", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    try:
        vm_pid = int(task_row(containerd, "r1")[1])
        # The pod's host processes are accounted in the cgroup its config names.
        memory = [ln for ln in Path(f"/proc/{vm_pid}/cgroup").read_text().splitlines()
                  if ":memory:" in ln or ln.startswith("0::")]  # fmt: skip
        assert memory and memory[0].endswith("/default/r1"), memory

        containerd.restart()
        events = containerd.events()  # (a subscription ends with the daemon)
        assert task_row(containerd, "r1")[2] == "RUNNING"
        assert exec_out(containerd, "r1", "after-restart", "echo", "still-here") == "still-here"

        import json
        import os
        import signal

        record = json.loads((state_root / "k" / "default" / "r1.json").read_text())
        os.kill(record["shim_pid"], signal.SIGKILL)
        wait_for("containerd to see the exit",
                 lambda: task_row(containerd, "r1")[2:3] in (["STOPPED"], []))  # fmt: skip
        wait_for("the exit event", lambda: [e for e in events.field("r1", "/tasks/exit")
                                            if e.get("id") == "r1"], 30)  # fmt: skip
        vm_gone = lambda: not procs_with("qemu-system", str(state_root))  # noqa: E731
        wait_for("the VM to die with its shim", vm_gone)
    finally:
        containerd.ctr("task", "delete", "-f", "r1")
        containerd.ctr("container", "delete", "r1")
    exits = events.field("r1", "/tasks/exit")
    assert exits and exits[-1].get("exit_status") == 137, (
        events.records("r1"),
        (containerd.base / "containerd.log").read_text()[-5000:],
    )
    assert not Path("/sys/fs/cgroup/memory/default/r1").exists()


def test_log_uris_file_and_binary(containerd: Any, image: str, tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "l1.log"
    r = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--log-uri", f"file://{log_file}",
                       image, "l1", "sh", "-c", "echo to-file; echo err-file >&2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sorted(log_file.read_text().split()) == ["err-file", "to-file"]

    logger = tmp_path / "logger.sh"
    logger.write_text('#!/bin/sh\nexec 5>&-\ncat <&3 >"$2.out" &\ncat <&4 >"$2.err"\nwait\n'
                      'echo "$CONTAINER_ID $CONTAINER_NAMESPACE" >"$2.env"\n')  # fmt: skip
    logger.chmod(0o755)
    prefix = tmp_path / "l2"
    r = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--log-uri",
                       f"binary://{logger}?out={prefix}", image, "l2", "sh", "-c",
                       "echo to-binary; echo err-binary >&2; exit 5")  # fmt: skip
    assert r.returncode == 5, r.stderr
    wait_for("the logger to finish", lambda: Path(f"{prefix}.env").exists(), 20)
    assert Path(f"{prefix}.out").read_text() == "to-binary\n"
    assert Path(f"{prefix}.err").read_text() == "err-binary\n"
    assert Path(f"{prefix}.env").read_text() == "l2 default\n"


def test_a_shim_nobody_claims_exits_and_leaves_nothing(
    tmp_path: Path, cli_env: dict[str, str], state_root: Path
) -> None:
    """A shim whose starter never sends Create (here it names a containerd nobody serves)
    ends after ``shim.unclaimed_timeout``: its process, socket, lock and record are gone."""
    add_config(Path(cli_env["RUNVM_CONFIG"]), "[shim]\nunclaimed_timeout = 2\n")
    bundle = tmp_path / "bundle"
    make_bundle(bundle, ["true"])
    env = {**cli_env, "TTRPC_ADDRESS": str(tmp_path / "nobody.sock.ttrpc")}
    shim = ["containerd-shim-runvm-v2", "-namespace", "unclaimed", "-publish-binary",
            "/bin/true", "-address", str(tmp_path / "nobody.sock"), "-id", "lonely"]  # fmt: skip
    started = subprocess.run([*shim, "start"], cwd=bundle, env=env, input=b"",
                             capture_output=True, timeout=60)  # fmt: skip
    assert started.returncode == 0, started.stderr
    socket = Path(started.stdout.decode().strip().removeprefix("unix://"))
    assert socket.exists()
    shims = [p for p, a in own_processes(state_root, tmp_path).items() if "shim-runvm" in a]
    assert shims, "no shim serves the socket start printed"
    deadline = time.monotonic() + 30
    while own_processes(state_root, tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not own_processes(state_root, tmp_path), "the unclaimed shim still runs"
    left = sorted(str(p) for p in state_root.rglob("*") if not p.is_dir())
    assert not left, f"left behind: {left}"
