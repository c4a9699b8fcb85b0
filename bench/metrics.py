"""Scrape latency of `runvm metrics serve` with 1, 20 and 100 sandboxes.

The owners are fakes, but real in everything the daemon sees: a ttrpc server on a
`monitor.sock` in each sandbox's run directory under a private state root, answering the
owner's Snapshot with the figures of a pod of two containers whose agent requests spread
over 20 methods (the shapes a monitor sends), and naming this process as the monitor, so
the host figures are read from /proc too. The daemon is the real command, on a free
loopback port, collecting every second. For each count: the median, 95th percentile and
worst of --scrapes HTTP GETs of /metrics, the page's size, the daemon's collection round,
and the median against the budget of 100 ms.

Usage (after scripts/install; no root, no VM):
    python3 bench/metrics.py [--counts 1,20,100] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from runvm.metrics import SERVICE, owner
from runvm.metrics.figures import ContainerFigures, ContainerStats, PodFigures
from runvm.metrics.recorder import CallRecorder
from runvm.ttrpc import Server

BUDGET = 0.1


def pod(sandbox: str) -> PodFigures:
    rec = CallRecorder()
    for i in range(20):
        for j in range(50):
            rec.observe(f"Method{i}", 0.0005 * (j + 1))
    stats = ContainerStats(5_000_000, 3_000_000, 2_000_000, 12 << 20, 256 << 20, 4, 1024, 0)
    return PodFigures(
        sandbox, f"pod-{sandbox}", "default", "ready", "clone", f"/run/{sandbox}", sandbox,
        processes=(("monitor", os.getpid()), ("qemu", os.getpid())),
        boot_steps=(("template", 0.01), ("qemu-start", 0.2), ("restore", 0.3),
                    ("agent-ready", 0.05), ("resume-clone", 0.02), ("create-sandbox", 0.01)),
        guest_memory_total=250 << 20,
        containers=tuple(ContainerFigures(f"{sandbox}-{k}", k, "running", stats)
                         for k in ("pause", "app")),
        agent_methods=rec.figures(),
    )  # fmt: skip


def owners(root: Path, count: int, ready: threading.Event, stop: threading.Event) -> None:
    async def main() -> None:
        servers = []
        for i in range(count):
            name = f"sb{i:03}"
            directory = root / "sandboxes" / name
            directory.mkdir(parents=True)
            figures = [pod(name)]

            async def answer(
                budget: float, figures: list[PodFigures] = figures
            ) -> list[PodFigures]:
                return figures

            server = Server()
            server.register(SERVICE, owner.handlers(answer))
            await server.serve_unix(str(directory / "monitor.sock"))
            servers.append(server)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        for server in servers:
            server.close()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(port: int) -> tuple[float, bytes]:
    began = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        body = reply.read()
    return time.perf_counter() - began, body


def measure(count: int, scrapes: int) -> tuple[list[float], int, float]:
    with tempfile.TemporaryDirectory(prefix="rvm-", dir="/tmp") as tmp:
        root = Path(tmp)
        ready, stop = threading.Event(), threading.Event()
        thread = threading.Thread(target=owners, args=(root, count, ready, stop))
        thread.start()
        ready.wait(60)
        conf = root / "runvm.toml"
        conf.write_text(f'[runtime]\nstate_root = "{root}"\n')
        port = free_port()
        daemon = subprocess.Popen([sys.executable, "-m", "runvm.cli.main", "--config", str(conf),
                                   "metrics", "serve", "--listen", f"127.0.0.1:{port}",
                                   "--interval", "1"], stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:  # until a round has seen every sandbox
                try:
                    _, page = get(port)
                    if page.count(b"runvm_sandbox_up{") == count:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the daemon did not see every sandbox"
                time.sleep(0.2)
            times = []
            for _ in range(scrapes):
                took, page = get(port)
                times.append(took)
                time.sleep(0.005)
            line = next(ln for ln in page.decode().splitlines()
                        if ln.startswith("runvm_metrics_collect_duration_seconds "))  # fmt: skip
            return times, len(page), float(line.split()[1])
        finally:
            daemon.terminate()
            daemon.wait(20)
            stop.set()
            thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,20,100")
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    print(f"{'sandboxes':>9} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'page KiB':>9} "
          f"{'round ms':>9} {'median/budget':>14}")  # fmt: skip
    for count in (int(c) for c in args.counts.split(",")):
        times, size, round_s = measure(count, args.scrapes)
        times.sort()
        median = statistics.median(times)
        p95 = times[int(len(times) * 0.95) - 1]
        print(f"{count:>9} {median * 1e3:>10.2f} {p95 * 1e3:>8.2f} {times[-1] * 1e3:>8.2f} "
              f"{size / 1024:>9.1f} {round_s * 1e3:>9.1f} {median / BUDGET:>14.3f}",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
