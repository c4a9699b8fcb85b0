"""The metrics daemon against real sockets and fakes of its owners: finding them on disk
(garbage included), asking them with a deadline (a hung one, one that speaks garbage, one
that is gone), stale values kept and marked, the page's format and its cost with 100
sandboxes, and the command's bad input and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runvm.errors import ConfigError
from runvm.metrics import SERVICE, owner, serve
from runvm.metrics.collect import Collector
from runvm.metrics.discover import MAX_RECORD, Owner, owners
from runvm.metrics.export import NAMES, render
from runvm.metrics.figures import ContainerFigures, ContainerStats, PodFigures
from runvm.metrics.recorder import CallRecorder
from runvm.ttrpc import Server


async def hang() -> None:
    await asyncio.Event().wait()


def figures(sandbox: str, cpu_usec: int = 1_000_000, methods: int = 3) -> PodFigures:
    rec = CallRecorder()
    for i in range(methods):
        rec.observe(f"Method{i}", 0.001 * (i + 1))
    stats = ContainerStats(cpu_usec, cpu_usec // 2, cpu_usec // 2, 8 << 20, 0, 2, 0, 0)
    return PodFigures(
        sandbox, f"pod-{sandbox}", "default", "ready", "cold", f"/run/{sandbox}", f"i-{sandbox}",
        processes=(("monitor", os.getpid()),),
        boot_steps=(("qemu-start", 0.3), ("agent-ready", 0.9)), guest_memory_total=256 << 20,
        containers=(ContainerFigures(sandbox, "app", "running", stats),),
        agent_methods=rec.figures(),
    )  # fmt: skip


async def owner_at(path: Path, answer: Callable[[float], Awaitable[list[PodFigures]]]) -> Server:
    server = Server()
    server.register(SERVICE, owner.handlers(answer))
    await server.serve_unix(str(path))
    return server


def monitor_dir(root: Path, name: str) -> Path:
    directory = root / "sandboxes" / name
    directory.mkdir(parents=True)
    return directory / "monitor.sock"


# --- discovery --------------------------------------------------------------------------------
def test_owners_are_found_on_disk_and_garbage_is_skipped(tmp_path: Path) -> None:
    root = tmp_path
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(monitor_dir(root, "cli1")))
    (root / "sandboxes" / "pooled").mkdir()  # a cache VM: no monitor
    (root / "sandboxes" / "afile").write_text("x")
    (root / "s").mkdir()
    pods = root / "k" / "default"
    pods.mkdir(parents=True)
    shim = {"socket": str(root / "s" / "abc"), "shim_pid": os.getpid(), "vm_pid": "12"}
    (pods / "p1.json").write_text(json.dumps(shim))
    (pods / "p2.json").write_text(json.dumps(shim))  # the same shim serves both
    (pods / "p1.log").write_text("not a record")
    for name, body in {
        "junk.json": b"\x00\xff{{{", "list.json": b"[1, 2]", "nosock.json": b'{"socket": 5}',
        "outside.json": json.dumps({"socket": "/etc/passwd"}).encode(),
        "relative.json": b'{"socket": "s/abc"}',
        "huge.json": b'{"socket": "' + b"a" * (MAX_RECORD + 10) + b'"}',
    }.items():  # fmt: skip
        (pods / name).write_bytes(body)
    found = owners(root)
    assert found.bad == 6
    assert [(o.kind, o.names) for o in found.owners] == [("monitor", ("cli1",)),
                                                         ("shim", ("p1", "p2"))]  # fmt: skip
    assert found.owners[1].pids == (("shim", os.getpid()),)  # "12" is not a pid
    assert owners(tmp_path / "absent").owners == []
    listening.close()


# --- collection -------------------------------------------------------------------------------
def test_a_round_marks_hung_garbage_and_gone_owners_and_keeps_last_values(tmp_path: Path) -> None:
    async def body() -> None:
        root = tmp_path
        good, hung, garbage = (monitor_dir(root, n) for n in ("good", "hung", "garbage"))
        hang_good = asyncio.Event()
        cpu = [1_000_000]

        async def answer(budget: float) -> list[PodFigures]:
            if hang_good.is_set():
                await hang()
            return [figures("good", cpu[0])]

        async def never(budget: float) -> list[PodFigures]:
            await hang()
            return []

        servers = [await owner_at(good, answer), await owner_at(hung, never)]
        bad = Server()
        bad.register(SERVICE, {"Snapshot": lambda p, c: asyncio.sleep(0, b"\xff" * 64)})
        await bad.serve_unix(str(garbage))
        servers.append(bad)
        (root / "s").mkdir()
        (root / "k" / "ns").mkdir(parents=True)
        gone = {"socket": str(root / "s" / "dead"), "vm_pid": 0}
        (root / "k" / "ns" / "dead.json").write_text(json.dumps(gone))

        col = Collector(root, timeout=0.5)
        began = time.monotonic()
        await col.round()
        assert time.monotonic() - began < 1.5  # the hung owner costs the timeout, once
        views = {v.figures.sandbox_id: v for v in col.views.values()}
        assert set(views) == {"good", "hung", "garbage", "dead"}
        assert views["good"].up and not views["good"].stale
        assert views["good"].host["monitor"][0] is not None  # our own CPU, from /proc
        for name in ("hung", "garbage", "dead"):
            assert not views[name].up and views[name].stale and views[name].updated == 0
        errors = {s.labels["kind"]: s.value for m in col.errors.collect() for s in m.samples
                  if s.name.endswith("_total")}  # fmt: skip
        assert errors["owner_timeout"] == 1 and errors["owner_bad_answer"] == 1
        assert errors["owner_unreachable"] == 1

        first = views["good"].updated
        hang_good.set()
        cpu[0] = 5_000_000
        await col.round()
        view = next(v for v in col.views.values() if v.figures.sandbox_id == "good")
        assert not view.up and view.stale and view.updated == first
        stats = view.figures.containers[0].stats
        assert stats is not None and stats.cpu_usage_usec == 1_000_000  # the last answer's

        page = render(col).decode()
        parsed = {m.name: m for m in text_string_to_metric_families(page)}
        stale = {s.labels["sandbox"]: s.value for s in parsed["runvm_sandbox_stale"].samples}
        assert stale == {"good": 1.0, "hung": 1.0, "garbage": 1.0, "dead": 1.0}
        boots = parsed["runvm_boot_step_duration_seconds"].samples
        assert any(s.labels.get("step") == "qemu-start" and s.name.endswith("_count")
                   and s.value == 1 for s in boots)  # once, though seen twice  # fmt: skip

        (root / "k" / "ns" / "dead.json").unlink()  # gone from disk: gone from the page
        hang_good.clear()
        await col.round()
        assert {v.figures.sandbox_id for v in col.views.values()} == {"good", "hung", "garbage"}
        for server in servers:
            server.close()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_missing_parts_of_an_answer_are_taken_from_the_last_one_and_marked() -> None:
    answers = [figures("a", 1_000_000)]

    async def ask(o: Owner, timeout: float) -> list[PodFigures]:
        return answers

    async def body(root: Path) -> None:
        col = Collector(root, ask=ask)
        await col.round()
        [view] = col.views.values()
        assert not view.stale
        partial = figures("a", 2_000_000)
        answers[0] = PodFigures(**{**partial.__dict__, "guest_memory_total": None,
                                   "containers": (ContainerFigures("a", "app", "running",
                                                                   None),)})  # fmt: skip
        await col.round()
        [view] = col.views.values()
        assert view.up and view.stale and view.figures.guest_memory_total == 256 << 20
        stats = view.figures.containers[0].stats
        assert stats is not None and stats.cpu_usage_usec == 1_000_000

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        monitor_dir(Path(tmp), "a").touch()  # found only if it is a socket:
        sock = socket.socket(socket.AF_UNIX)
        (Path(tmp) / "sandboxes" / "a" / "monitor.sock").unlink()
        sock.bind(str(Path(tmp) / "sandboxes" / "a" / "monitor.sock"))
        asyncio.run(body(Path(tmp)))
        sock.close()


def test_every_emitted_name_is_declared_and_the_page_parses(tmp_path: Path) -> None:
    async def ask(o: Owner, timeout: float) -> list[PodFigures]:
        return [figures(o.names[0])]

    for name in ("a", "b"):
        socket.socket(socket.AF_UNIX).bind(str(monitor_dir(tmp_path, name)))
    col = Collector(tmp_path, ask=ask)
    asyncio.run(col.round())
    page = render(col).decode()
    families = list(text_string_to_metric_families(page))
    names = {f"{f.name}_total" if f.type == "counter" else f.name for f in families}
    assert names <= NAMES and len(names) > 15
    cpu = [s for f in families if f.name == "runvm_container_cpu_usage_seconds"
           for s in f.samples]  # fmt: skip
    assert cpu and cpu[0].labels == {"sandbox": "a", "pod": "pod-a", "namespace": "default",
                                     "container": "a", "container_name": "app"}  # fmt: skip
    assert cpu[0].value == 1.0


# --- the endpoint: cost with 100 sandboxes, a hung owner never blocks a scrape ----------------
def scrape(port: int) -> tuple[float, bytes]:
    began = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        body = reply.read()
    return time.perf_counter() - began, body


def test_a_scrape_of_100_sandboxes_with_a_hung_owner_stays_under_100_ms(tmp_path: Path) -> None:
    async def ask(o: Owner, timeout: float) -> list[PodFigures]:
        if o.names[0] == "s000":
            await hang()
        return [figures(o.names[0], methods=15)]

    socks = []
    for i in range(100):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(monitor_dir(tmp_path, f"s{i:03}")))
        socks.append(sock)

    async def body() -> None:
        col = Collector(tmp_path, timeout=1.0, ask=ask)
        server = serve.bind("127.0.0.1", 0)
        port = server.server_address[1]
        loop = asyncio.get_running_loop()
        http = loop.run_in_executor(None, server.serve_forever)
        try:
            await col.round()
            server.page.body = render(col)
            pending = asyncio.ensure_future(col.round())  # blocked on the hung owner meanwhile
            times = []
            for _ in range(10):
                took, page = await asyncio.to_thread(scrape, port)
                times.append(took)
            assert not pending.done()
            await pending
        finally:
            server.shutdown()
            await http
            server.server_close()
        text = page.decode()
        assert text.count("runvm_sandbox_up{") == 100
        assert 'runvm_sandbox_stale{namespace="",pod="",sandbox="s000"} 1.0' in text
        assert sorted(times)[len(times) // 2] < 0.1, times

    asyncio.run(asyncio.wait_for(body(), 60))
    for sock in socks:
        sock.close()


# --- the command ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["bogus", "127.0.0.1", "127.0.0.1:0x10", "localhost:9839",
                                  "127.0.0.1:70000", "[::1:9839", "300.1.1.1:80"])  # fmt: skip
def test_bad_listen_addresses_are_refused_by_name(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid --listen"):
        serve.parse_listen(text)


def test_listen_addresses_parse() -> None:
    assert serve.parse_listen("127.0.0.1:9839") == ("127.0.0.1", 9839)
    assert serve.parse_listen("[::1]:80") == ("::1", 80)


def test_a_port_in_use_is_a_clear_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: .*in use"):
        serve.bind("127.0.0.1", port)
    taken.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def runvm(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    conf = tmp_path / "runvm.toml"
    conf.write_text(f'[runtime]\nstate_root = "{tmp_path / "state"}"\n')
    env = {**os.environ, "PYTHONPATH": str(Path(serve.__file__).parents[2])}
    return subprocess.Popen([sys.executable, "-m", "runvm.cli.main", "--config", str(conf),
                             "metrics", "serve", *args], env=env, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def test_the_daemon_serves_until_sigterm_and_leaves_the_port_free(tmp_path: Path) -> None:
    port = free_port()
    proc = runvm(tmp_path, "--listen", f"127.0.0.1:{port}", "--interval", "0.2")
    deadline = time.monotonic() + 20
    while True:
        try:
            _, page = scrape(port)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    assert b"runvm_metrics_collect_duration_seconds" in page
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    serve.bind("127.0.0.1", port).server_close()  # free again


def test_the_command_refuses_bad_input_with_a_nonzero_exit(tmp_path: Path) -> None:
    cases = ((["--listen", "nowhere"], "invalid --listen 'nowhere'"),
             (["--interval", "0"], "invalid --interval 0"),
             (["--interval", "1", "--timeout", "5"], "invalid --timeout 5"))  # fmt: skip
    for args, message in cases:
        proc = runvm(tmp_path, *args)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 1 and message in err, err
