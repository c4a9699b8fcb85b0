"""``runvm metrics serve`` scraped by a real Prometheus (Debian's binary, on loopback, with its
own config and data) while two CLI containers run, each in its own VM; PromQL through
Prometheus's HTTP API finds a pod's QEMU memory, its containers' CPU and the agent latency
histogram, labelled with the Kubernetes names the annotations carry."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_lifecycle import RUNVM, Cli, bundle, poll

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

POD = {"io.kubernetes.cri.sandbox-name": "web-0", "io.kubernetes.cri.sandbox-namespace": "shop",
       "io.kubernetes.cri.container-name": "app"}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> Cli:
    return Cli(tmp_path, cli_env)


@pytest.fixture
def endpoint(tmp_path: Path, cli_env: dict[str, str]) -> Iterator[int]:
    """``runvm metrics serve`` on a free loopback port, ended by SIGTERM (exit 0)."""
    port = free_port()
    log = (tmp_path / "metrics.log").open("wb")
    proc = subprocess.Popen([*RUNVM, "metrics", "serve", "--listen", f"127.0.0.1:{port}",
                             "--interval", "1"], env=cli_env, stdout=log, stderr=log)  # fmt: skip
    try:
        yield port
    finally:
        assert stop(proc) == 0, (tmp_path / "metrics.log").read_text()
        log.close()


@pytest.fixture
def prometheus(tmp_path: Path, endpoint: int) -> Iterator[str]:
    """A Prometheus of the test's own scraping the endpoint every second; its API's URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("needs Debian's prometheus package")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: runvm\n    static_configs: [{{targets: ['127.0.0.1:{endpoint}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: _ready(url), 60, "prometheus to be ready")
        yield url
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(tmp_path / "tsdb", ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus's HTTP API: its vector's samples."""
    q = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=10) as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def until(url: str, promql: str, timeout: float = 90) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def some() -> bool:
        found[:] = query(url, promql)
        return bool(found)

    poll(some, timeout, promql)
    return found


def test_prometheus_scrapes_two_pods(cli: Cli, prometheus: str, tmp_path: Path) -> None:
    script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo up; sleep 600"
    started = []
    try:
        for cid, annotations in (("met-a", POD), ("met-b", {})):
            directory = tmp_path / cid
            directory.mkdir()
            cli.create(bundle(directory, script, annotations=annotations), cid)
            started.append(cid)
            cli("start", cid)
        for cid in started:
            cli.wait_output(cid, "up\n", timeout=120)

        [qemu] = until(prometheus, 'runvm_process_pss_bytes{sandbox="met-a",process="qemu"}')
        assert float(qemu["value"][1]) > 16 << 20  # a guest's RAM in use: tens of MiB at least
        assert (qemu["metric"]["pod"], qemu["metric"]["namespace"]) == ("web-0", "shop")
        assert until(prometheus, 'runvm_process_cpu_seconds_total{sandbox="met-b",'
                     'process="monitor"} > 0')  # fmt: skip

        for cid in started:
            [cpu] = until(prometheus, f'runvm_container_cpu_usage_seconds_total{{sandbox="{cid}"}}'
                          " > 0")  # fmt: skip
            assert cpu["metric"]["container"] == cid
        [named] = query(prometheus, 'runvm_container_memory_usage_bytes{container_name="app"}')
        assert named["metric"]["sandbox"] == "met-a" and float(named["value"][1]) > 0
        [free] = until(prometheus, 'runvm_guest_memory_available_bytes{sandbox="met-a"} > 0')
        [total] = query(prometheus, 'runvm_guest_memory_total_bytes{sandbox="met-a"}')
        assert float(free["value"][1]) < float(total["value"][1])
        [io] = query(prometheus, 'runvm_container_io_write_bytes_total{container_name="app"}')
        assert float(io["value"][1]) >= 0  # a share is no block device: present, not counted

        count = (
            'runvm_agent_request_duration_seconds_count{sandbox="met-a",method="StatsContainer"}'
        )
        until(prometheus, f"{count} > 1")
        [p90] = until(prometheus, "histogram_quantile(0.9, sum by (le) (rate("
                      'runvm_agent_request_duration_seconds_bucket{sandbox="met-a",'
                      'method="StatsContainer"}[10s])))')  # fmt: skip
        assert 0 < float(p90["value"][1]) <= 10
        boots = until(prometheus, 'runvm_boot_step_duration_seconds_count{step="qemu-start"}')
        assert sum(float(b["value"][1]) for b in boots) == 2
        states = until(prometheus, 'runvm_sandboxes{state="ready"}')
        assert sum(float(s["value"][1]) for s in states) == 2
        up = query(prometheus, "runvm_sandbox_up == 1 and on (sandbox) runvm_sandbox_stale")
        assert {s["metric"]["sandbox"] for s in up} == {"met-a", "met-b"}
        dashboard = json.loads((Path(__file__).parents[2] / "docs/grafana-dashboard.json")
                               .read_text())  # fmt: skip
        for panel in dashboard["panels"]:  # every panel's query is valid PromQL
            for target in panel["targets"]:
                query(prometheus, target["expr"].replace("$sandbox", ".*"))
    finally:
        for cid in started:
            cli("kill", cid, "KILL", ok=False)
        for cid in started:
            deadline = time.monotonic() + 60
            while cli("delete", cid, ok=False).returncode != 0 and time.monotonic() < deadline:
                time.sleep(0.2)


def test_a_shim_pod_is_asked_through_the_shims_socket(
    containerd: Any, endpoint: int, tmp_path: Path
) -> None:
    from runvm.image.ociarchive import busybox_archive

    image = "localhost/runvm/busybox:latest"
    r = containerd.ctr("image", "import", str(busybox_archive(tmp_path / "bb.tar", image)))
    assert r.returncode == 0, r.stderr
    r = containerd.ctr("run", "-d", "--runtime", "io.containerd.runvm.v2", image, "met-shim",
                       "sh", "-c", "echo up; sleep 600")  # fmt: skip
    assert r.returncode == 0, r.stderr
    page: list[str] = []

    def scraped(needle: str) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint}/metrics", timeout=5) as reply:
            page[:] = [reply.read().decode()]
        return needle in page[0]

    try:
        poll(lambda: scraped('owner="shim",pod="",sandbox="met-shim"} 1.0'), 90, "the shim")
        cpu = 'runvm_container_cpu_usage_seconds_total{container="met-shim"'
        poll(lambda: scraped(cpu), 30, "the container's stats")
        text = page[0]
        assert (
            'runvm_process_pss_bytes{namespace="",pod="",process="shim",sandbox="met-shim"}' in text
        )
        assert 'method="CreateContainer",namespace="",pod="",sandbox="met-shim"}' in text
    finally:
        containerd.ctr("task", "kill", "-s", "SIGKILL", "met-shim")
        containerd.ctr("task", "delete", "-f", "met-shim")
        containerd.ctr("container", "delete", "met-shim")
    poll(lambda: not scraped('sandbox="met-shim"'), 60, "the pod to leave the page")
