"""Shared fixtures: requirement gates, the leak checker and strict skip accounting.

Under ``RUNVM_STRICT_SKIPS=1`` (CI) a skip is an error unless its reason starts with
``hardware:`` — the only things these hosts may lack are KVM, vhost-vsock, vhost-net, VFIO.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runvm import config as cfg

#: The smoke matrix (scripts/test): e.g. "image.variant=minimal hypervisor.machine=q35" puts
#: these settings into every config the tests write.
MATRIX = os.environ.get("RUNVM_TEST_MATRIX", "")

#: Where this session's sandboxes make templates on first use (a tmpfs; removed at its end).
TEMPLATES = f"/dev/shm/runvm-test-{os.getpid()}/templates"

#: Where sandboxes on the machine's defaults make templates: a test must never add one there.
MACHINE_TEMPLATES = Path(cfg.FactoryConfig.templates_dir)

HARDWARE_PREFIX = "hardware:"
ALLOWED_HARDWARE = ("KVM", "vhost-vsock", "vhost-net", "VFIO")
LEAK_PATTERNS = (
    "qemu-system",
    "virtiofsd",
    "containerd-shim-runvm",
    "runvm-monitor",
    "cache serve",
)


def matrix_settings() -> dict[str, dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {}
    for item in MATRIX.split():
        key, _, value = item.partition("=")
        table, _, name = key.partition(".")
        parsed: object = {"true": True, "false": False}.get(value, value)
        tables.setdefault(table, {})[name] = int(value) if value.isdigit() else parsed
    return tables


def _toml(tables: dict[str, dict[str, Any]]) -> str:
    """TOML for tables of scalars (strings, numbers, booleans)."""
    out = []
    for table, values in tables.items():
        out.append(f"[{table}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


def loose_permissions(*roots: Path) -> list[str]:
    """Paths under ``roots`` that others may read or write: more than 0711 for a directory,
    0700 for anything else. Shared container files (below a ``shared`` directory) are the
    container's own and are skipped."""
    loose = []
    for top in roots:
        for path in [top, *top.rglob("*")]:
            if "shared" in path.relative_to(top).parts[:-1]:
                continue
            mode = path.lstat().st_mode
            private = 0o711 if path.is_dir() else 0o700
            if mode & 0o777 & ~private:
                loose.append(f"{oct(mode & 0o777)} {path}")
    return loose


def add_config(path: Path, text: str) -> None:
    """Merge the TOML ``text`` into the config file at ``path`` (its tables may exist)."""
    import tomllib

    merged = tomllib.loads(path.read_text()) if path.exists() else {}
    for table, values in tomllib.loads(text).items():
        merged.setdefault(table, {}).update(values)
    path.write_text(_toml(merged))


def runvm_cli(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``runvm --root $RUNVM_TEST_ROOT ARGS`` with ``env``; asserts success unless not ``ok``."""
    r = subprocess.run([sys.executable, "-m", "runvm.cli.main", "--root", env["RUNVM_TEST_ROOT"],
                        *args], env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert not ok or r.returncode == 0, f"runvm {' '.join(args)}: {r.stderr}"
    return r


def start_write_exec(env: dict[str, str], name: str, bundle: Path) -> None:
    """Start container ``name`` (whose program writes "hi" to /written), wait for the write to
    reach the host's rootfs, then exec: its output, and an exit code of 7."""
    runvm_cli(env, "start", name)
    deadline = time.monotonic() + 30
    while not (bundle / "rootfs/written").exists():
        assert time.monotonic() < deadline, "the container did not write its rootfs"
        time.sleep(0.2)
    assert runvm_cli(env, "exec", name, "cat", "/written").stdout == "hi\n"
    r = runvm_cli(env, "exec", name, "sh", "-c", "exit 7", ok=False)
    assert r.returncode == 7, r.stderr


def write_config(path: Path, state_root: Path, accel_cache: Path) -> Path:
    """A private config (:func:`private_tables`), plus the smoke matrix's settings."""
    path.write_text(_toml(private_tables(state_root, accel_cache)))
    return path


def _hardware_skip(what: str, detail: str) -> None:
    """Skip because these hosts lack ``what`` (one of ALLOWED_HARDWARE)."""
    assert what in ALLOWED_HARDWARE, what
    pytest.skip(f"{HARDWARE_PREFIX} {what}: {detail}")


@pytest.fixture
def hardware_skip() -> Callable[[str, str], None]:
    """The only allowed way to skip in CI: for hardware these hosts lack."""
    return _hardware_skip


_bad_skips: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and os.environ.get("RUNVM_STRICT_SKIPS") == "1":
        reason = (
            str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        )
        if not reason.removeprefix("Skipped: ").startswith(HARDWARE_PREFIX):
            _bad_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _bad_skips:
        print("\nSkips not allowed in strict mode (CI has every non-hardware requirement):")
        for line in _bad_skips:
            print("  " + line)
        session.exitstatus = 1


def guest_arch() -> str:
    """The architecture of the tests' guests (the matrix's hypervisor.arch; "" for auto: the
    host's). Tests pass it to the busybox bundles and images they build."""
    wanted = str(matrix_settings().get("hypervisor", {}).get("arch", "auto"))
    return "" if wanted == "auto" else wanted


def _image_ready() -> str | None:
    try:
        from runvm.runtime.guestimage import resolve_guest_files

        resolve_guest_files(cfg.parse(matrix_settings()))
    except Exception as exc:
        return f"no guest image ({exc}); run `runvm image build`"
    return None


def vm_requirements() -> str | None:
    """Why VM tests cannot run here, or None."""
    from runvm.hypervisor.qemu.driver import QemuHypervisor

    if os.geteuid() != 0:
        return "needs root"
    try:
        QemuHypervisor.for_config(cfg.parse(matrix_settings())).resolve_binary()
    except Exception as exc:
        return f"needs QEMU: {exc}"
    return _image_ready()


@pytest.fixture(scope="session")
def vm_ready() -> None:
    reason = vm_requirements()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def accel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One accelerator probe per test session."""
    return tmp_path_factory.mktemp("accel-cache")


@pytest.fixture(scope="session")
def runvm_binary() -> str:
    """The installed console script next to this interpreter (not a version-manager shim)."""
    import sys

    candidate = Path(sys.executable).parent / "runvm"
    found = str(candidate) if candidate.exists() else shutil.which("runvm")
    assert found, "runvm is not installed (pip install -e .)"
    return found


@pytest.fixture
def state_root() -> Iterator[Path]:
    """A private runvm state root with a short path (it holds unix sockets)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="rvs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _session_templates() -> Iterator[None]:
    """Templates the session's sandboxes made on first use go with the session."""
    yield
    shutil.rmtree(Path(TEMPLATES).parent, ignore_errors=True)


def private_tables(state_root: Path, accel_cache: Path) -> dict[str, dict[str, Any]]:
    """Config tables of a test: its own state, cache socket and factory (never the machine's),
    the session's templates directory, cold boots unless the smoke matrix says otherwise."""
    tables: dict[str, dict[str, Any]] = {
        "runtime": {"state_root": str(state_root), "cache_dir": str(accel_cache)},
        "cache": {"socket": str(state_root / "cache.sock")},
        "factory": {"enable": False, "dir": str(state_root / "factory"),
                    "templates_dir": TEMPLATES},
    }  # fmt: skip
    for table, values in matrix_settings().items():
        tables.setdefault(table, {}).update(values)
    return tables


@pytest.fixture
def runvm_config(state_root: Path, accel_cache: Path) -> cfg.RunvmConfig:
    """Defaults with private state and cache directories."""
    return cfg.parse(private_tables(state_root, accel_cache))


@pytest.fixture
def cli_env(tmp_path: Path, state_root: Path, accel_cache: Path) -> dict[str, str]:
    """Environment for `runvm` subprocesses: private config, state root and --root."""
    conf = write_config(tmp_path / "runvm.toml", state_root, accel_cache)
    return {**os.environ, "RUNVM_CONFIG": str(conf), "RUNVM_TEST_ROOT": str(tmp_path / "root")}


def _procs() -> dict[int, str]:
    """pid -> whole command line of the processes a leak would be. From /proc, never from
    ps: ps cuts lines at 80 columns without a terminal, and a cut line loses the state root
    that tells another runvm's VM helpers (:func:`_foreign`) from this test's."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if any(p in args for p in LEAK_PATTERNS):
            found[int(entry.name)] = args.strip()
    return found


def _mounts(marker: str) -> list[str]:
    return [ln for ln in Path("/proc/self/mounts").read_text().splitlines() if marker in ln]


def _machine_templates() -> set[str]:
    """Entries in the machine's templates directory (a test that adds one ran on defaults)."""
    return {p.name for p in MACHINE_TEMPLATES.glob("*")} if MACHINE_TEMPLATES.is_dir() else set()


def _environ_config(pid: int) -> str | None:
    """The RUNVM_CONFIG a process runs with, if it has one."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [e[len(b"RUNVM_CONFIG=") :] for e in environ if e.startswith(b"RUNVM_CONFIG=")]
    return found[0].decode(errors="replace") if found else None


def _foreign(pid: int, args: str, state_root: Path, tmp_path: Path) -> bool:
    """A process of another runvm (another state root, another test's or another user's
    configuration): not this test's to judge or kill. Without such evidence it is this test's."""
    if "/sandboxes/" in args:
        return f"{state_root}/sandboxes/" not in args
    if str(state_root) in args or str(tmp_path) in args:
        return False
    config = _environ_config(pid)
    return config is not None and not config.startswith(str(tmp_path))


def own_processes(state_root: Path, tmp_path: Path) -> dict[int, str]:
    """pid -> command line of this test's QEMU, virtiofsd, shim and monitor processes; those
    of any other runvm on the machine are left out."""
    return {p: a for p, a in _procs().items() if not _foreign(p, a, state_root, tmp_path)}


@pytest.fixture
def leak_check(tmp_path: Path, state_root: Path) -> Iterator[None]:
    """Fail the test if it leaves processes, mounts, sockets or state behind."""
    before = _procs()
    templates = _machine_templates()
    yield
    deadline = time.monotonic() + 5
    while True:
        new = {p: a for p, a in own_processes(state_root, tmp_path).items() if p not in before}
        if not new or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    problems = [f"process {p}: {a}" for p, a in new.items()]
    problems += [f"mount: {m}" for m in _mounts(str(tmp_path)) + _mounts(str(state_root))]
    roots = [p for p in (tmp_path / "root").glob("*")] if (tmp_path / "root").exists() else []
    problems += [f"container state left: {p}" for p in roots]
    state = state_root
    if state.exists():
        files = [p for p in state.rglob("*") if not p.is_dir()]
        sandboxes = list((state / "sandboxes").glob("*"))
        problems += [f"state left: {p}" for p in sorted({*files, *sandboxes})]
    added = sorted(_machine_templates() - templates)
    problems += [f"template made on the machine's defaults: {MACHINE_TEMPLATES / n}" for n in added]
    for pid in new:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    assert not problems, "leaks:\n" + "\n".join(problems)


def in_netns(name: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` on a thread that entered network namespace ``name`` (namespaces are per
    thread: the test process itself stays where it is)."""
    import threading

    from runvm.network import netns

    out: list[Any] = []

    def body() -> None:
        netns.enter(f"/var/run/netns/{name}")
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


class PrivateContainerd:
    """A containerd of the test's own: config, root, state and sockets in a temp dir."""

    def __init__(
        self, base: Path, env: dict[str, str], cri: str = "", wrap: tuple[str, ...] = ()
    ) -> None:
        """``cri``: the CRI plugin's config table body (the plugin is off without it);
        ``wrap`` prefixes the daemon's command (``nsenter --net=...``)."""
        self.base = base
        self.address = str(base / "c.sock")
        self.wrap = wrap
        top = "" if cri else 'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        plugins = f'[plugins."io.containerd.grpc.v1.cri"]\n{cri}' if cri else ""
        (base / "config.toml").write_text(
            "version = 2\n"
            f'root = "{base / "root"}"\nstate = "{base / "state"}"\n{top}'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n{plugins}'
        )
        self.log = (base / "containerd.log").open("wb")
        self.env = env
        self.watchers: list[EventLog] = []
        self.start()

    def start(self) -> None:
        base, env = self.base, self.env
        self.proc = subprocess.Popen(
            [*self.wrap, "containerd", "--config", str(base / "config.toml")],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not Path(self.address).exists():
            assert self.proc.poll() is None, (base / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not start"
            time.sleep(0.1)

    def ctr(
        self, *args: str, timeout: float = 180, **kw: object
    ) -> subprocess.CompletedProcess[bytes]:
        done: subprocess.CompletedProcess[bytes] = subprocess.run(  # type: ignore[call-overload]
            ["ctr", "--address", self.address, *args], capture_output=True, timeout=timeout, **kw
        )
        return done

    def restart(self) -> None:
        """Stop the daemon (not its shims) and start it again on the same state."""
        self.proc.terminate()
        self.proc.wait(15)
        Path(self.address).unlink(missing_ok=True)
        self.start()

    def events(self) -> EventLog:
        """Start recording ``ctr events`` (stopped with the daemon)."""
        log = EventLog(self)
        self.watchers.append(log)
        return log

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        subprocess.run(["umount", "-R", str(self.base / "state")], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


class EventLog:
    """``ctr events`` running in the background: task events by container, in order."""

    def __init__(self, daemon: PrivateContainerd) -> None:
        self.path = daemon.base / f"events-{len(daemon.watchers)}.log"
        self.out = self.path.open("wb")
        self.proc = subprocess.Popen(["ctr", "--address", daemon.address, "events"],
                                     stdout=self.out, stderr=subprocess.STDOUT)  # fmt: skip
        time.sleep(0.5)  # subscribed before the caller acts

    def records(self, container_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(topic, event) of every /tasks/ event of ``container_id`` seen so far."""
        found = []
        for line in self.path.read_text(errors="replace").splitlines():
            head, brace, body = line.partition("{")
            topic = next((w for w in head.split() if w.startswith("/tasks/")), None)
            if not topic or not brace:
                continue
            event = json.loads(brace + body)
            if event.get("container_id") == container_id:
                found.append((topic, event))
        return found

    def topics(self, container_id: str) -> list[str]:
        return [topic for topic, _ in self.records(container_id)]

    def field(self, container_id: str, topic: str) -> list[dict[str, Any]]:
        return [event for t, event in self.records(container_id) if t == topic]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.out.close()


@pytest.fixture
def containerd(tmp_path: Path, state_root: Path, accel_cache: Path) -> Iterator[PrivateContainerd]:
    """A private containerd (short socket paths live in their own /tmp dir) that finds
    this interpreter's ``containerd-shim-runvm-v2`` first on its PATH."""
    if not shutil.which("containerd") or not shutil.which("ctr"):
        pytest.skip("needs containerd and ctr (Debian containerd)")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="rvc-", dir="/tmp"))
    conf = write_config(tmp_path / "runvm.toml", state_root, accel_cache)
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    env = {**os.environ, "RUNVM_CONFIG": str(conf), "PATH": path}
    daemon = PrivateContainerd(base, env)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def factory(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[Path]:
    """A template made by `runvm factory init` in a private factory directory (and none
    made on first use)."""
    directory = Path(f"{cli_env['RUNVM_TEST_ROOT']}-factory")
    add_config(Path(cli_env["RUNVM_CONFIG"]),
               f'[factory]\nenable = true\nfirst_use = false\ndir = "{directory}"\n')  # fmt: skip
    runvm = [sys.executable, "-m", "runvm.cli.main"]
    r = subprocess.run([*runvm, "factory", "init"], env=cli_env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "template saved" in r.stdout
    try:
        yield directory
    finally:
        subprocess.run([*runvm, "factory", "destroy"], env=cli_env, capture_output=True,
                       timeout=60)  # fmt: skip
    assert not directory.exists()


def cache_settings(size: int) -> str:
    """The [cache] table of a test: enabled, ``size`` VMs (the socket is the test's own)."""
    return f"[cache]\nenable = true\nsize = {size}\n"


class CacheDaemon:
    """`runvm cache serve` with the test's config, its socket in the test's state root."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "runvm.cli.main", "cache",
                                          "serve"], env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out)  # fmt: skip

    def status(self) -> dict[str, Any]:
        r = subprocess.run([sys.executable, "-m", "runvm.cli.main", "cache", "status"],
                           env=self.env, capture_output=True, text=True, timeout=30)  # fmt: skip
        return json.loads(r.stdout) if r.returncode == 0 else {}

    def wait(self, timeout: float = 180, **want: int) -> dict[str, Any]:
        """Poll the status until it shows ``want`` (e.g. ready=1); fail with the log."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if all(status.get(k) == v for k, v in want.items()):
                return status
            assert self.proc is None or self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{status} != {want}: {self.log.read_text()}"
            time.sleep(0.5)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.proc.wait(60)


@pytest.fixture
def cache_daemon(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[CacheDaemon]:
    """A running cache daemon (size 1 unless the test's config says otherwise before it)."""
    import tomllib

    conf = Path(cli_env["RUNVM_CONFIG"])
    if "size" not in tomllib.loads(conf.read_text()).get("cache", {}):
        add_config(conf, cache_settings(1))
    daemon = CacheDaemon(cli_env, tmp_path / "cache.log")
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
