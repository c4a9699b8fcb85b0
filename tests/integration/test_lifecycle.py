"""The OCI lifecycle rule by rule through the runc-compatible verbs (runtime-spec "Lifecycle",
"Operations", config "Hooks"; runc's CLI conventions), every container in its own VM.

`create` gets files or /dev/null as stdio, never pipes: the monitor inherits them and keeps
them for the container's life, as runc's container init does.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import guest_arch, loose_permissions

from runvm.cli.common import parse_signal
from runvm.errors import RunvmError
from runvm.image.busybox import make_bundle
from runvm.runtime.state import StateStore

RUNVM = [sys.executable, "-m", "runvm.cli.main"]
NOT_FOUND = "container does not exist"
PR_SET_CHILD_SUBREAPER = 36

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]


class Cli:
    """``runvm --root <tmp>/root ...`` as subprocesses, plus what the tests observe."""

    def __init__(self, tmp_path: Path, cli_env: dict[str, str]) -> None:
        self.tmp = tmp_path
        self.root = Path(cli_env["RUNVM_TEST_ROOT"])
        self.env = {**cli_env, "HOOK_PROBE": "inherited"}
        self.calls = 0

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*RUNVM, "--root", str(self.root), *args], env=self.env,
                           capture_output=True, text=True, timeout=180)  # fmt: skip
        assert not ok or r.returncode == 0, f"runvm {' '.join(args)}: {r.stderr}"
        return r

    def fails(self, *args: str, expect: str) -> str:
        r = self(*args, ok=False)
        assert r.returncode != 0 and expect in r.stderr, (args, r.returncode, r.stderr)
        return r.stderr

    def create(self, b: Path, cid: str, *flags: str, ok: bool = True) -> tuple[int, str]:
        """``create`` with a file as stdout (``<cid>.out``); returns (exit code, stderr)."""
        self.calls += 1
        err_path = self.tmp / f"create{self.calls}.err"
        with (self.tmp / f"{cid}.out").open("ab") as out, err_path.open("wb") as err:
            r = subprocess.run(
                [*RUNVM, "--root", str(self.root), "create", "--bundle", str(b), *flags, cid],
                env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=180,
            )  # fmt: skip
        err_text = err_path.read_text()
        assert not ok or r.returncode == 0, f"create {cid}: {err_text}"
        return r.returncode, err_text

    def output(self, cid: str) -> str:
        return (self.tmp / f"{cid}.out").read_text()

    def wait_output(self, cid: str, needle: str, timeout: float = 60) -> float:
        return poll(lambda: needle in self.output(cid), timeout, f"{needle!r} from {cid}")

    def state(self, cid: str) -> dict[str, Any]:
        return json.loads(self("state", cid).stdout)  # type: ignore[no-any-return]

    def wait_status(self, cid: str, status: str, timeout: float = 60) -> float:
        """When ``state`` first said ``status`` (in process: the CLI takes ~0.5 s to start)."""
        store = StateStore(self.root)
        return poll(lambda: store.load(cid).oci()["status"] == status, timeout, status)


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> Cli:
    return Cli(tmp_path, cli_env)


def poll(predicate: Any, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic()


def bundle(tmp: Path, script: str, terminal: bool = False, **top: Any) -> Path:
    path = tmp / "bundle"
    spec = make_bundle(path, ["sh", "-c", script], arch=guest_arch(), terminal=terminal)
    spec.update(top)
    (path / "config.json").write_text(json.dumps(spec))
    return path


def alive(pid: int) -> bool:
    """Running (a zombie is dead: it only waits for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def qemu_of(cid: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    return [ln for ln in ps.splitlines() if "qemu-system" in ln and f"runvm-{cid}" in ln]


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Adopt orphans as containerd's shim and conmon do: the monitor becomes our child."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        deadline = time.monotonic() + 15  # reap what we adopted (QEMU after a monitor kill)
        with contextlib.suppress(ChildProcessError):
            while time.monotonic() < deadline:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    time.sleep(0.05)


def read_until(fd: int, needle: bytes | None, timeout: float = 60) -> bytes:
    """Read ``fd`` until ``needle`` is seen or, for None, until the other side is closed."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle is None or needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} not seen; got {seen!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: a pty master whose slave is closed everywhere
                chunk = b""
            if not chunk:
                assert needle is None, f"EOF before {needle!r}; got {seen!r}"
                break
            seen += chunk
    return seen


# --- rules that need no VM -----------------------------------------------------------------


def test_unknown_ids_and_bad_signals(cli: Cli) -> None:
    for verb in ("state", "start", "kill", "delete"):
        cli.fails(verb, "c-nope", expect=NOT_FOUND)
    cli("delete", "--force", "c-nope")  # as runc: forcing away what is not there succeeds
    cli.fails("kill", "c-nope", "SIGNOPE", expect="unknown signal 'SIGNOPE'")
    assert {parse_signal(s) for s in ("KILL", "SIGKILL", "9", "kill")} == {signal.SIGKILL}
    for bad in ("0", "65", "SIGFOO", "-9", ""):
        with pytest.raises(RunvmError, match="unknown signal"):
            parse_signal(bad)


def test_json_log_of_a_failing_command(cli: Cli) -> None:
    log = cli.tmp / "log.json"
    r = cli("--log", str(log), "--log-format", "json", "state", "c-nope", ok=False)
    assert r.returncode == 1 and r.stderr == f"runvm: {NOT_FOUND}\n"
    (line,) = log.read_text().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "error" and entry["msg"] == NOT_FOUND
    assert abs(datetime.fromisoformat(entry["time"]) - datetime.now(UTC)) < timedelta(minutes=1)


# --- the lifecycle -------------------------------------------------------------------------


def test_create_start_stop_delete(cli: Cli) -> None:
    b = bundle(cli.tmp, "echo go; sleep 2; exit 3", annotations={"org.example.k": "v"})
    pid_file = cli.tmp / "init.pid"
    with subreaper():
        cli.create(b, "c-life", "--pid-file", str(pid_file))
        text = pid_file.read_text()
        assert text.isdigit(), repr(text)  # decimal, no trailing newline
        pid = int(text)
        assert alive(pid)
        state = cli.state("c-life")
        assert state == {
            "ociVersion": "1.0.2", "id": "c-life", "pid": pid, "status": "created",
            "bundle": str(b), "rootfs": str(b / "rootfs"), "created": state["created"],
            "owner": "root", "annotations": {"org.example.k": "v"},
        }  # fmt: skip
        assert state["created"].endswith("Z")
        age = datetime.now(UTC) - datetime.fromisoformat(state["created"])
        assert timedelta(0) < age < timedelta(minutes=5)
        _, err = cli.create(b, "c-life", ok=False)
        assert err == "runvm: container with id c-life already exists\n"

        cli("start", "c-life")
        assert cli.state("c-life")["status"] == "running"
        err = cli.fails("start", "c-life", expect="cannot start container c-life")
        assert "'running'" in err
        went = cli.wait_output("c-life", "go\n")
        stopped = cli.wait_status("c-life", "stopped")
        assert stopped - went < 2 + 1, f"stopped {stopped - went - 2:.2f} s after the exit"
        assert cli.state("c-life") | {"created": ""} == state | {"created": "", "pid": 0,
                                                                   "status": "stopped"}  # fmt: skip
        cli.fails("kill", "c-life", "KILL", expect="not running")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3  # the pid file's process: the init's status
    cli("delete", "c-life")
    cli.fails("state", "c-life", expect=NOT_FOUND)
    assert cli.output("c-life") == "go\n"


def test_run_exits_with_the_init_status(cli: Cli) -> None:
    b = bundle(cli.tmp, "exit 3")
    with (cli.tmp / "run.out").open("wb") as out:
        argv = [*RUNVM, "--root", str(cli.root), "run", "--bundle", str(b), "c-run"]
        r = subprocess.run(argv, env=cli.env, stdin=subprocess.DEVNULL, stdout=out, timeout=180)
    assert r.returncode == 3
    cli.fails("state", "c-run", expect=NOT_FOUND)


def test_delete_needs_force_and_kill_takes_names_and_numbers(cli: Cli) -> None:
    b = bundle(cli.tmp, "trap 'echo usr1' USR1; echo ready; while :; do sleep 1; done")
    pid_file = cli.tmp / "init.pid"
    cli.create(b, "c-rules", "--pid-file", str(pid_file))
    cli("start", "c-rules")
    cli.wait_output("c-rules", "ready\n")
    for n, name in enumerate(("USR1", "SIGUSR1", str(int(signal.SIGUSR1))), 1):
        cli("kill", "c-rules", name)
        poll(lambda n=n: cli.output("c-rules").count("usr1") == n, 30, f"{name} handled")
    cli.fails("delete", "c-rules", expect="not stopped")
    assert cli.state("c-rules")["status"] == "running"
    cli("delete", "--force", "c-rules")
    assert not alive(int(pid_file.read_text()))
    assert not qemu_of("c-rules")
    cli.fails("state", "c-rules", expect=NOT_FOUND)


def test_killed_monitor_means_stopped_and_delete_cleans(cli: Cli) -> None:
    b = bundle(cli.tmp, "echo ready; while :; do sleep 1; done")
    pid_file = cli.tmp / "init.pid"
    with subreaper():  # the dead monitor stays a zombie until we reap it: still "stopped"
        cli.create(b, "c-mkill", "--pid-file", str(pid_file))
        cli("start", "c-mkill")
        cli.wait_output("c-mkill", "ready\n")
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        cli.wait_status("c-mkill", "stopped", timeout=2)
        state = cli.state("c-mkill")
        assert (state["status"], state["pid"]) == ("stopped", 0)
        poll(lambda: not qemu_of("c-mkill"), 10, "QEMU to die with its monitor")
    cli("delete", "c-mkill")
    cli.fails("state", "c-mkill", expect=NOT_FOUND)


# --- hooks ---------------------------------------------------------------------------------


def hook(log: Path, name: str, script: str = "", **extra: Any) -> dict[str, Any]:
    """A host hook that appends its name, $HOOK_PROBE and its stdin (the state) to ``log``."""
    logger = f'{{ echo "$1 ${{HOOK_PROBE:-none}}"; cat; echo; }} >> {shlex.quote(str(log))}'
    return {"path": "/bin/sh", "args": ["sh", "-c", script or logger, "sh", name], **extra}


def hook_log(log: Path) -> list[tuple[str, dict[str, Any]]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [(lines[i], json.loads(lines[i + 1])) for i in range(0, len(lines), 2)]


def test_hooks_order_and_state_on_stdin(cli: Cli) -> None:
    log = cli.tmp / "hooks.log"
    kinds = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart")
    hooks: dict[str, Any] = {kind: [hook(log, kind)] for kind in kinds}
    hooks["poststop"] = [hook(log, "broken", "echo poststop-broke >&2; exit 1"),
                         hook(log, "poststop")]  # fmt: skip
    b = bundle(cli.tmp, "echo ready; while :; do sleep 1; done", hooks=hooks)
    cli.create(b, "c-hooks", "--pid-file", str(cli.tmp / "init.pid"))
    seen = [name for name, _ in hook_log(log)]
    assert seen == [f"{kind} inherited" for kind in kinds[:3]]  # no `env`: runvm's environment
    cli("start", "c-hooks")
    assert [name for name, _ in hook_log(log)][3:] == [f"{kind} inherited" for kind in kinds[3:]]
    cli.wait_output("c-hooks", "ready\n")
    cli("kill", "c-hooks", "KILL")
    cli.wait_status("c-hooks", "stopped", timeout=30)
    r = cli("delete", "c-hooks")
    assert "poststop hook failed" in r.stderr and "WARNING" in r.stderr  # a warning, not an error
    assert not alive(int((cli.tmp / "init.pid").read_text())) and not qemu_of("c-hooks")
    entries = hook_log(log)
    assert [name.split()[0] for name, _ in entries] == [*kinds, "poststop"]
    expected = ["creating"] * 3 + ["created", "running", "stopped"]
    for (name, doc), status in zip(entries, expected, strict=True):
        assert (doc["id"], doc["status"], doc["bundle"]) == ("c-hooks", status, str(b)), name
        assert ("pid" in doc) == (status != "stopped"), name


@pytest.mark.parametrize("failure", ["exit", "timeout"])
def test_failing_create_runtime_hook_fails_create(cli: Cli, failure: str) -> None:
    hook_pid = cli.tmp / "hook.pid"
    if failure == "exit":
        broken = hook(cli.tmp / "unused", "createRuntime", "echo hook-broke >&2; exit 7")
    else:
        script = f"echo $$ > {shlex.quote(str(hook_pid))}; exec sleep 60"
        broken = hook(cli.tmp / "unused", "createRuntime", script, timeout=2)
    b = bundle(cli.tmp, "echo never", hooks={"createRuntime": [broken]})
    started = time.monotonic()
    code, err = cli.create(b, "c-hookfail", ok=False)
    assert code != 0
    if failure == "exit":
        assert "createRuntime hook failed (exit status 7)" in err and "hook-broke" in err
    else:
        assert "createRuntime hook timed out after 2 s" in err
        assert time.monotonic() - started < 50 and not alive(int(hook_pid.read_text()))
    cli.fails("state", "c-hookfail", expect=NOT_FOUND)
    assert cli.output("c-hookfail") == ""


# --- the console socket --------------------------------------------------------------------


def test_console_socket_pty_and_resizes(cli: Cli) -> None:
    b = bundle(cli.tmp, "stty size; read x; stty size", terminal=True)
    path = str(cli.tmp / "pty.sock")
    received: list[tuple[bytes, int]] = []

    def serve(listener: socket.socket) -> None:  # as containerd's shim or conmon would
        conn, _ = listener.accept()
        with conn:
            msg, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        fcntl.ioctl(fds[0], termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        received.append((msg, fds[0]))

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        cli.create(b, "c-tty", "--console-socket", path)
        thread.join(10)
    ((msg, master),) = received
    try:
        assert msg == b"/dev/ptmx"
        cli("start", "c-tty")
        first = read_until(master, b"\n")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        time.sleep(2)  # SIGWINCH -> the monitor -> TtyWinResize in the guest
        os.write(master, b"go\r")
        transcript = first + read_until(master, None)  # until the monitor closes the slave
        # runc's master is the container's own terminal: one line discipline, the guest's.
        assert transcript == b"30 100\r\ngo\r\n40 120\r\n"
    finally:
        os.close(master)
        cli("delete", "--force", "c-tty")


def test_unwritable_pid_file_undoes_the_container(cli: Cli) -> None:
    b = bundle(cli.tmp, "sleep 100")
    code, err = cli.create(b, "c-pidfail", "--pid-file", "/nonexistent/dir/pid", ok=False)
    assert code == 1 and "pid file /nonexistent/dir/pid" in err and "Traceback" not in err
    cli.fails("state", "c-pidfail", expect=NOT_FOUND)
    assert not qemu_of("c-pidfail")


def test_state_is_private_to_root(cli: Cli, state_root: Path) -> None:
    """Sockets, logs and state files are 0600 in 0700 directories (or at most traversable:
    0711); nothing under the runtime roots is writable or readable by others."""
    b = bundle(cli.tmp, "sleep 30")
    cli.create(b, "c-private")
    try:
        loose = loose_permissions(cli.root, state_root)
        assert not loose, loose
    finally:
        cli("delete", "--force", "c-private")
