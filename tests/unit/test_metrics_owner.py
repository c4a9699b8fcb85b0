"""The owner's side of the metrics: agent requests timed where they are made (a real ttrpc
connection), the figures a pod reports within its budget, and the Snapshot encoding."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_core import FakeSandbox, make_bundle

import runvm.metrics
from runvm import config as cfg
from runvm.errors import AgentTimeout, ProtocolError, RpcError
from runvm.metrics import metrics_pb2 as mpb
from runvm.metrics import owner, wire
from runvm.metrics.figures import LATENCY_BOUNDS, ContainerFigures, ContainerStats, PodFigures
from runvm.metrics.recorder import MAX_METHODS, CallRecorder
from runvm.protocol import AGENT_SERVICE
from runvm.protocol import agent_pb2 as pb
from runvm.protocol.client import AgentClient
from runvm.runtime.lifecycle import SandboxState
from runvm.runtime.pod import Pod
from runvm.runtime.sandbox import Sandbox, SandboxOptions
from runvm.runtime.telemetry import pod_figures
from runvm.ttrpc import CallContext, Client, Code, Server

PACKAGE = Path(runvm.metrics.__file__).parent


# --- the recorder -----------------------------------------------------------------------------
def test_recorder_counts_cumulative_buckets_and_failures_by_kind() -> None:
    rec = CallRecorder()
    rec.observe("StatsContainer", 0.0005)
    rec.observe("StatsContainer", 0.003)
    rec.observe("StatsContainer", 99.0, "timeout")
    rec.observe("ExecProcess", 0.2, "rpc")
    [exec_, stats] = rec.figures()
    assert stats.method == "StatsContainer" and stats.latency.bounds == LATENCY_BOUNDS
    assert stats.latency.counts[0] == 1  # <= 1 ms
    assert stats.latency.counts[LATENCY_BOUNDS.index(0.005)] == 2
    assert stats.latency.counts[-2] == 2 and stats.latency.counts[-1] == 3  # 99 s: only +Inf
    assert stats.latency.sum == pytest.approx(99.0035)
    assert (stats.timeouts, stats.lost, stats.rpc_errors) == (1, 0, 0)
    assert (exec_.method, exec_.rpc_errors) == ("ExecProcess", 1)


def test_recorder_tells_apart_a_bounded_number_of_methods() -> None:
    rec = CallRecorder()
    for i in range(MAX_METHODS + 10):
        rec.observe(f"M{i}", 0.01)
    methods = {m.method: m for m in rec.figures()}
    assert len(methods) == MAX_METHODS + 1 and methods["other"].latency.counts[-1] == 10


# --- AgentClient times every request on a real connection -------------------------------------
def test_agent_client_reports_each_request_with_its_outcome(tmp_path: Path) -> None:
    async def body() -> None:
        async def stats(payload: bytes, ctx: CallContext) -> bytes:
            request = pb.StatsContainerRequest.FromString(payload)
            if request.container_id == "slow":
                await asyncio.sleep(5)
            if request.container_id == "gone":
                raise RpcError(Code.NOT_FOUND, "no such container")
            return pb.StatsContainerResponse(cpu_usage_usec=7).SerializeToString()

        server = Server()
        server.register(AGENT_SERVICE, {"StatsContainer": stats})
        listener = await server.serve_unix(str(tmp_path / "agent.sock"))
        agent = AgentClient(await Client.connect_unix(str(tmp_path / "agent.sock")), timeout=0.2)
        seen: list[tuple[str, str]] = []
        agent.on_call = lambda method, seconds, outcome: seen.append((method, outcome))
        assert (await agent.stats_container("c")).cpu_usage_usec == 7
        with pytest.raises(RpcError):
            await agent.stats_container("gone")
        with pytest.raises(AgentTimeout):
            await agent.stats_container("slow")
        raw = pb.StatsContainerRequest(container_id="c").SerializeToString()
        await agent.forward(AGENT_SERVICE, "StatsContainer", raw, 1.0)  # a proxy's request
        await agent.close()
        listener.close()
        server.close()
        assert seen == [("StatsContainer", ""), ("StatsContainer", "rpc"),
                        ("StatsContainer", "timeout"), ("StatsContainer", "")]  # fmt: skip

    asyncio.run(asyncio.wait_for(body(), 20))


# --- a pod's figures, within the budget -------------------------------------------------------
class TelemetrySandbox(FakeSandbox):
    """A fake sandbox with what the figures read of a real one."""

    def __init__(self, run_dir: Path, options: SandboxOptions) -> None:
        super().__init__(run_dir, options)
        self.state = SandboxState.READY
        self.origin = "clone"
        self.calls = CallRecorder()
        self.virtiofsd = None
        self.timings = {"qemu-start": 0.4, "restore": 0.2, "agent-ready": 0.1}
        self.calls.observe("CreateContainer", 0.05)


def pod_with(tmp_path: Path) -> tuple[Pod, list[TelemetrySandbox]]:
    booted: list[TelemetrySandbox] = []

    async def start(pod_id: str, config: cfg.RunvmConfig, o: SandboxOptions) -> Sandbox:
        booted.append(TelemetrySandbox(tmp_path / "run", o))
        return cast(Sandbox, booted[-1])

    (tmp_path / "run").mkdir()
    return Pod("pod", cfg.RunvmConfig(), place=False, start_sandbox=start), booted


def annotate(bundle: Path, annotations: dict[str, str]) -> None:
    spec = json.loads((bundle / "config.json").read_text())
    spec["annotations"] = annotations
    (bundle / "config.json").write_text(json.dumps(spec))


def test_pod_figures_name_the_pod_and_carry_stats_timings_and_pids(tmp_path: Path) -> None:
    async def body() -> None:
        pod, booted = pod_with(tmp_path)
        bundle = make_bundle(tmp_path / "b1")
        annotate(bundle, {"io.kubernetes.cri.sandbox-name": "web",
                          "io.kubernetes.cri.sandbox-namespace": "prod",
                          "io.kubernetes.cri.container-name": "nginx"})  # fmt: skip
        await pod.create("c1", bundle, stdin=False)
        agent = booted[0].agent
        agent.memory_current = 4096
        figures = await pod_figures(pod, "shim", 1.0)
        assert (figures.sandbox_id, figures.pod_name, figures.pod_namespace) == (
            "pod",
            "web",
            "prod",
        )
        assert (figures.state, figures.origin) == ("ready", "clone")
        assert dict(figures.processes)["qemu"] == booted[0].vm.pid
        assert figures.boot_steps == (("qemu-start", 0.4), ("restore", 0.2), ("agent-ready", 0.1))
        assert figures.guest_memory_total is not None
        [c1] = figures.containers
        assert (c1.id, c1.name, c1.state) == ("c1", "nginx", "created")
        assert c1.stats is not None and (c1.stats.cpu_usage_usec, c1.stats.memory_current) == (
            1,
            4096,
        )  # what the fake agent counts
        assert [m.method for m in figures.agent_methods] == ["CreateContainer"]
        await pod.close()

    asyncio.run(asyncio.wait_for(body(), 20))


def test_pod_figures_leave_out_what_the_agent_does_not_answer_in_time(tmp_path: Path) -> None:
    async def body() -> None:
        pod, booted = pod_with(tmp_path)
        await pod.create("c1", make_bundle(tmp_path / "b1"), stdin=False)
        agent = booted[0].agent
        never = asyncio.Event()

        async def hung(*_: Any) -> Any:
            await never.wait()

        agent.stats_container = hung  # type: ignore[method-assign,assignment]
        agent.guest_details = hung  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        began = loop.time()
        figures = await pod_figures(pod, "monitor", 0.2)
        assert loop.time() - began < 0.5
        assert figures.guest_memory_total is None
        assert [c.stats for c in figures.containers] == [None]
        assert figures.state == "ready" and figures.boot_steps  # what the owner holds
        await pod.close()

    asyncio.run(asyncio.wait_for(body(), 20))


def test_budget_is_a_share_of_the_callers_deadline() -> None:
    assert owner.budget(None) == owner.DEFAULT_BUDGET
    assert owner.budget(1.0) == pytest.approx(0.6)
    assert owner.budget(60.0) == owner.MAX_BUDGET


# --- the Snapshot encoding --------------------------------------------------------------------
def sample() -> PodFigures:
    stats = ContainerStats(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
    rec = CallRecorder()
    rec.observe("StatsContainer", 0.002, "lost")
    return PodFigures(
        "sb1", "web", "prod", "ready", "cache", "/run/x", "inst", "",
        (("qemu", 1234), ("shim", 99)), (("cache-adopt", 0.5),), 256 << 20, 200 << 20,
        (ContainerFigures("c1", "nginx", "running", stats),
         ContainerFigures("c2", "", "stopped", None)),
        rec.figures(),
    )  # fmt: skip


def test_snapshot_round_trips() -> None:
    assert wire.decode(wire.encode([sample()])) == [sample()]


def test_decode_refuses_garbage_with_a_protocol_error() -> None:
    good = mpb.SnapshotResponse.FromString(wire.encode([sample()]))
    cases: list[bytes] = [b"\xff" * 20, b"\x0a\x05abc", b"x" * (wire.MAX_PAYLOAD + 1)]
    for mutate in (
        lambda p: setattr(p, "sandbox_id", ""),
        lambda p: setattr(p, "pod_name", "a\nb"),
        lambda p: setattr(p, "pod_name", "x" * 1000),
        lambda p: p.boot_steps.add(name="s", seconds=float("nan")),
        lambda p: p.boot_steps.add(name="s", seconds=-1.0),
        lambda p: p.agent_methods[0].latency.counts.append(1),
        lambda p: p.agent_methods[0].latency.bounds.__setitem__(0, 99.0),
        lambda p: p.agent_methods[0].latency.counts.__setitem__(0, 10**6),
        lambda p: p.containers.add(id=""),
        lambda p: [p.processes.add(role="qemu", pid=5) for _ in range(20)],
    ):
        bad = mpb.SnapshotResponse()
        bad.CopyFrom(good)
        mutate(bad.pods[0])
        cases.append(bad.SerializeToString())
    for payload in cases:
        with pytest.raises(ProtocolError):
            wire.decode(payload)


def test_decode_maps_unknown_states_and_drops_nonsense_pids() -> None:
    processes = [mpb.HostProcess(role="qemu", pid=0), mpb.HostProcess(role="evil", pid=77)]
    pods = [mpb.PodFigures(sandbox_id="s", state="exploded", origin="moon", processes=processes)]
    answer = mpb.SnapshotResponse(pods=pods)
    [pod] = wire.decode(answer.SerializeToString())
    assert (pod.state, pod.origin, pod.processes) == ("unknown", "unknown", (("unknown", 77),))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_decode_of_any_bytes_returns_or_raises_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        wire.decode(data)


@pytest.mark.skipif(shutil.which("protoc") is None, reason="protoc is not installed")
def test_generated_code_matches_proto(tmp_path: Path) -> None:
    subprocess.run(["protoc", "-I.", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                    "metrics.proto"], cwd=PACKAGE, check=True)  # fmt: skip
    for name in ("metrics_pb2.py", "metrics_pb2.pyi"):
        assert (tmp_path / name).read_text() == (PACKAGE / name).read_text(), f"{name} is stale"
