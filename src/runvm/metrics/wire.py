"""The ``Snapshot`` answer on the wire: :mod:`figures` values <-> ``metrics_pb2``.

Contract of :func:`decode`: the payload comes from another process and is not trusted. It
returns figures that keep every limit below (sizes, counts, strings, enumerations, sane
histograms), or raises :class:`~runvm.errors.ProtocolError` naming what was wrong; it never
raises anything else. Unknown enumeration values become ``"unknown"``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from google.protobuf.message import DecodeError

from runvm.errors import ProtocolError
from runvm.metrics import metrics_pb2 as mpb
from runvm.metrics.figures import (
    CONTAINER_STATES,
    ORIGINS,
    ROLES,
    SANDBOX_STATES,
    ContainerFigures,
    ContainerStats,
    Histogram,
    MethodFigures,
    PodFigures,
)

MAX_PAYLOAD = 1 << 20
MAX_PODS = 1024
MAX_CONTAINERS = 256
MAX_METHODS = 65
MAX_STEPS = 64
MAX_PROCESSES = 8
MAX_BOUNDS = 32
MAX_TEXT = 256
MAX_COUNT = 1 << 62


def encode(pods: Sequence[PodFigures]) -> bytes:
    return mpb.SnapshotResponse(pods=[_pod_pb(p) for p in pods]).SerializeToString()


def _pod_pb(p: PodFigures) -> mpb.PodFigures:
    return mpb.PodFigures(
        sandbox_id=p.sandbox_id, pod_name=p.pod_name, pod_namespace=p.pod_namespace,
        state=p.state, origin=p.origin, run_dir=p.run_dir, agent_instance=p.agent_instance,
        failure=p.failure[:MAX_TEXT],
        processes=[mpb.HostProcess(role=r, pid=pid) for r, pid in p.processes],
        boot_steps=[mpb.BootStep(name=n, seconds=s) for n, s in p.boot_steps],
        has_guest_memory=p.guest_memory_total is not None,
        guest_memory_total_bytes=p.guest_memory_total or 0,
        guest_memory_available_bytes=p.guest_memory_available or 0,
        containers=[_container_pb(c) for c in p.containers],
        agent_methods=[mpb.AgentMethod(
            method=m.method, timeouts=m.timeouts, lost=m.lost, rpc_errors=m.rpc_errors,
            latency=mpb.Histogram(bounds=m.latency.bounds, counts=m.latency.counts,
                                  sum=m.latency.sum),
        ) for m in p.agent_methods],
    )  # fmt: skip


def _container_pb(c: ContainerFigures) -> mpb.ContainerFigures:
    s = c.stats
    if s is None:
        return mpb.ContainerFigures(id=c.id, name=c.name, state=c.state)
    return mpb.ContainerFigures(
        id=c.id, name=c.name, state=c.state, has_stats=True,
        cpu_usage_usec=s.cpu_usage_usec, cpu_user_usec=s.cpu_user_usec,
        cpu_system_usec=s.cpu_system_usec, memory_current=s.memory_current,
        memory_max=s.memory_max, pids_current=s.pids_current, pids_max=s.pids_max,
        oom_kills=s.oom_kills, io_read_bytes=s.io_read_bytes, io_write_bytes=s.io_write_bytes,
        io_read_ops=s.io_read_ops, io_write_ops=s.io_write_ops,
    )  # fmt: skip


def decode(payload: bytes) -> list[PodFigures]:
    """See the module docstring."""
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"metrics snapshot of {len(payload)} bytes (limit {MAX_PAYLOAD})")
    try:
        reply = mpb.SnapshotResponse.FromString(payload)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ProtocolError(f"undecodable metrics snapshot: {exc}") from exc
    _most(reply.pods, MAX_PODS, "pods")
    return [_pod(p) for p in reply.pods]


def _most(items: Sequence[object], limit: int, what: str) -> None:
    if len(items) > limit:
        raise ProtocolError(f"metrics snapshot: {len(items)} {what} (limit {limit})")


def _text(value: str, what: str) -> str:
    if len(value) > MAX_TEXT or not value.isprintable():
        raise ProtocolError(f"metrics snapshot: bad {what} {value[:40]!r}")
    return value


def _one_of(value: str, allowed: Sequence[str]) -> str:
    return value if value in allowed else "unknown"


def _count(value: int, what: str) -> int:
    if value > MAX_COUNT:
        raise ProtocolError(f"metrics snapshot: {what} {value} is out of range")
    return value


def _seconds(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise ProtocolError(f"metrics snapshot: {what} {value} is not a duration")
    return value


def _pod(p: mpb.PodFigures) -> PodFigures:
    sid = _text(p.sandbox_id, "sandbox id")
    if not sid:
        raise ProtocolError("metrics snapshot: a pod without a sandbox id")
    for items, limit, what in ((p.processes, MAX_PROCESSES, "processes"),
                               (p.boot_steps, MAX_STEPS, "boot steps"),
                               (p.containers, MAX_CONTAINERS, "containers"),
                               (p.agent_methods, MAX_METHODS, "agent methods")):  # fmt: skip
        _most(items, limit, what)
    return PodFigures(
        sandbox_id=sid,
        pod_name=_text(p.pod_name, "pod name"),
        pod_namespace=_text(p.pod_namespace, "pod namespace"),
        state=_one_of(p.state, SANDBOX_STATES),
        origin=_one_of(p.origin, ORIGINS) if p.origin else "",
        run_dir=_text(p.run_dir, "run directory"),
        agent_instance=_text(p.agent_instance, "agent instance"),
        failure=p.failure[:MAX_TEXT],
        processes=tuple((_one_of(x.role, ROLES), x.pid) for x in p.processes if x.pid > 1),
        boot_steps=tuple(_step(s) for s in p.boot_steps),
        guest_memory_total=_memory(p),
        guest_memory_available=_available(p),
        containers=tuple(_container(c) for c in p.containers),
        agent_methods=tuple(_method(m) for m in p.agent_methods),
    )


def _step(s: mpb.BootStep) -> tuple[str, float]:
    return _text(s.name, "boot step"), _seconds(s.seconds, "boot step")


def _memory(p: mpb.PodFigures) -> int | None:
    return _count(p.guest_memory_total_bytes, "guest memory") if p.has_guest_memory else None


def _available(p: mpb.PodFigures) -> int | None:
    if not p.has_guest_memory:
        return None
    return _count(p.guest_memory_available_bytes, "guest memory available")


def _container(c: mpb.ContainerFigures) -> ContainerFigures:
    stats = None
    if c.has_stats:
        stats = ContainerStats(*(_count(getattr(c, f), f) for f in (
            "cpu_usage_usec", "cpu_user_usec", "cpu_system_usec", "memory_current",
            "memory_max", "pids_current", "pids_max", "oom_kills", "io_read_bytes",
            "io_write_bytes", "io_read_ops", "io_write_ops")))  # fmt: skip
    cid = _text(c.id, "container id")
    if not cid:
        raise ProtocolError("metrics snapshot: a container without an id")
    return ContainerFigures(cid, _text(c.name, "container name"),
                            _one_of(c.state, CONTAINER_STATES), stats)  # fmt: skip


def _method(m: mpb.AgentMethod) -> MethodFigures:
    h = m.latency
    bounds, counts = tuple(h.bounds), tuple(h.counts)
    if len(bounds) > MAX_BOUNDS or len(counts) != len(bounds) + 1:
        raise ProtocolError(f"metrics snapshot: histogram of {m.method[:40]!r} is malformed")
    unsorted = any(a >= b for a, b in itertools.pairwise(bounds))
    if unsorted or any(a > b for a, b in itertools.pairwise(counts)) or \
            not all(math.isfinite(b) for b in bounds):  # fmt: skip
        raise ProtocolError(f"metrics snapshot: histogram of {m.method[:40]!r} is not sorted")
    latency = Histogram(bounds, tuple(_count(c, "count") for c in counts),
                        _seconds(h.sum, "latency sum"))  # fmt: skip
    return MethodFigures(_text(m.method, "method"), latency, _count(m.timeouts, "timeouts"),
                         _count(m.lost, "lost"), _count(m.rpc_errors, "rpc errors"))  # fmt: skip
