"""The figures an owner reports about one pod: plain frozen values, shared by the owner
(which fills them) and the daemon (which renders them). Nothing here does I/O."""

from __future__ import annotations

from dataclasses import dataclass

LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the agent request latency buckets."""

SANDBOX_STATES = ("booting", "ready", "failed", "stopped", "none")
ORIGINS = ("cold", "clone", "cache")
CONTAINER_STATES = ("creating", "created", "running", "paused", "stopped")
ROLES = ("qemu", "virtiofsd", "shim", "monitor")


@dataclass(frozen=True)
class Histogram:
    """Cumulative: ``counts[i]`` observations were <= ``bounds[i]``; the last is all."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float


@dataclass(frozen=True)
class MethodFigures:
    """Agent requests of one method: their latency and how many failed, by how."""

    method: str
    latency: Histogram
    timeouts: int = 0
    lost: int = 0
    rpc_errors: int = 0


@dataclass(frozen=True)
class ContainerStats:
    """A container's cgroup v2 figures in the guest (limits: 0 for none; I/O: its block
    devices' io.stat, summed)."""

    cpu_usage_usec: int
    cpu_user_usec: int
    cpu_system_usec: int
    memory_current: int
    memory_max: int
    pids_current: int
    pids_max: int
    oom_kills: int
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    io_read_ops: int = 0
    io_write_ops: int = 0


@dataclass(frozen=True)
class ContainerFigures:
    id: str
    name: str  # the Kubernetes container name, if annotated
    state: str
    stats: ContainerStats | None  # None: the agent did not answer in time


@dataclass(frozen=True)
class PodFigures:
    sandbox_id: str
    pod_name: str = ""
    pod_namespace: str = ""
    state: str = "none"
    origin: str = ""
    run_dir: str = ""
    agent_instance: str = ""
    failure: str = ""
    processes: tuple[tuple[str, int], ...] = ()  # (role, host pid)
    boot_steps: tuple[tuple[str, float], ...] = ()  # (step, seconds), in boot order
    guest_memory_total: int | None = None  # None: the agent did not answer in time
    guest_memory_available: int | None = None
    containers: tuple[ContainerFigures, ...] = ()
    agent_methods: tuple[MethodFigures, ...] = ()
