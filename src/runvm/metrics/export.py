"""The collector's views in the Prometheus text format (prometheus_client's families).

Contract: :func:`render` is a pure function of the collector's state; every metric name it
can emit is in :data:`NAMES` (the dashboard test checks its queries against them). Per-
sandbox series carry ``sandbox``, ``pod`` and ``namespace`` (the Kubernetes pod's name and
namespace, empty outside Kubernetes); see docs/metrics.md for the meaning of each.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from runvm.metrics.collect import Collector, View

POD = ["sandbox", "pod", "namespace"]
CONTAINER = [*POD, "container", "container_name"]


def _families() -> dict[str, Metric]:
    g, c = GaugeMetricFamily, CounterMetricFamily
    return {
        "runvm_sandbox_up": g("runvm_sandbox_up", "1 if the sandbox's owner answered the last "
                              "round", labels=[*POD, "owner"]),
        "runvm_sandbox_stale": g("runvm_sandbox_stale", "1 if some of the sandbox's figures "
                                 "are older than the last round", labels=POD),
        "runvm_sandbox_last_update_timestamp_seconds": g(
            "runvm_sandbox_last_update_timestamp_seconds",
            "When the owner's answer the figures come from arrived (Unix time)", labels=POD),
        "runvm_sandbox_info": g("runvm_sandbox_info", "The sandbox's state, origin and owner",
                                labels=[*POD, "state", "origin", "owner"]),
        "runvm_sandboxes": g("runvm_sandboxes", "Sandboxes by state and origin",
                             labels=["state", "origin"]),
        "runvm_process_cpu_seconds": c("runvm_process_cpu_seconds", "Host CPU time of the "
                                       "sandbox's processes", labels=[*POD, "process"]),
        "runvm_process_pss_bytes": g("runvm_process_pss_bytes", "Proportional set size of "
                                     "the sandbox's host processes", labels=[*POD, "process"]),
        "runvm_guest_memory_total_bytes": g("runvm_guest_memory_total_bytes",
                                            "Memory the guest kernel has", labels=POD),
        "runvm_guest_memory_available_bytes": g("runvm_guest_memory_available_bytes",
                                                "Guest MemAvailable: what could be used "
                                                "without swapping", labels=POD),
        "runvm_container_cpu_usage_seconds": c("runvm_container_cpu_usage_seconds",
                                               "Guest cgroup CPU time", labels=CONTAINER),
        "runvm_container_cpu_user_seconds": c("runvm_container_cpu_user_seconds",
                                              "Guest cgroup user CPU time", labels=CONTAINER),
        "runvm_container_cpu_system_seconds": c("runvm_container_cpu_system_seconds",
                                                "Guest cgroup system CPU time",
                                                labels=CONTAINER),
        "runvm_container_memory_usage_bytes": g("runvm_container_memory_usage_bytes",
                                                "Guest cgroup memory.current",
                                                labels=CONTAINER),
        "runvm_container_memory_limit_bytes": g("runvm_container_memory_limit_bytes",
                                                "Guest cgroup memory.max (absent: none)",
                                                labels=CONTAINER),
        "runvm_container_pids": g("runvm_container_pids", "Guest cgroup pids.current",
                                  labels=CONTAINER),
        "runvm_container_pids_limit": g("runvm_container_pids_limit", "Guest cgroup pids.max "
                                        "(absent: none)", labels=CONTAINER),
        "runvm_container_oom_kills": c("runvm_container_oom_kills", "OOM kills in the "
                                       "container's guest cgroup", labels=CONTAINER),
        **{f"runvm_container_io_{what}": c(f"runvm_container_io_{what}", f"Guest cgroup "
                                           f"io.stat {key} over its block devices",
                                           labels=CONTAINER)
           for what, key in (("read_bytes", "rbytes"), ("write_bytes", "wbytes"),
                             ("reads", "rios"), ("writes", "wios"))},
        "runvm_agent_request_duration_seconds": HistogramMetricFamily(
            "runvm_agent_request_duration_seconds", "Agent requests of the sandbox's owner, by "
            "method (long polls such as WaitProcess last as long as they wait)",
            labels=[*POD, "method"]),
        "runvm_agent_request_errors": c("runvm_agent_request_errors", "Failed agent requests "
                                        "by method and kind (timeout, lost, rpc)",
                                        labels=[*POD, "method", "kind"]),
        "runvm_metrics_collect_duration_seconds": g(
            "runvm_metrics_collect_duration_seconds", "How long the last round took"),
        "runvm_metrics_last_collect_timestamp_seconds": g(
            "runvm_metrics_last_collect_timestamp_seconds", "When the last round ended"),
    }  # fmt: skip


NAMES = frozenset(
    {
        *(f"{f.name}_total" if f.type == "counter" else f.name for f in _families().values()),
        "runvm_errors_total",
        "runvm_boot_step_duration_seconds",
    }
)
"""Every metric :func:`render` emits, as the page names it (counters end in ``_total``;
histograms add ``_bucket``, ``_sum`` and ``_count``)."""


class _Out:
    """The families of one render, added to by name."""

    def __init__(self) -> None:
        self.families = _families()

    def add(self, name: str, labels: list[str], value: float) -> None:
        family = self.families[name]
        assert isinstance(family, (GaugeMetricFamily, CounterMetricFamily))
        family.add_metric(labels, value)

    def histogram(
        self, name: str, labels: list[str], buckets: list[tuple[str, float]], total: float
    ) -> None:
        family = self.families[name]
        assert isinstance(family, HistogramMetricFamily)
        family.add_metric(labels, buckets, total)


def _add_view(f: _Out, view: View) -> None:
    p = view.figures
    pod = [p.sandbox_id, p.pod_name, p.pod_namespace]
    kind = view.owner.kind
    f.add("runvm_sandbox_up", [*pod, kind], 1.0 if view.up else 0.0)
    f.add("runvm_sandbox_stale", pod, 1.0 if view.stale else 0.0)
    if view.updated:
        f.add("runvm_sandbox_last_update_timestamp_seconds", pod, view.updated)
    f.add("runvm_sandbox_info", [*pod, p.state, p.origin or "unknown", kind], 1.0)
    for role, (cpu, pss) in sorted(view.host.items()):
        if cpu is not None:
            f.add("runvm_process_cpu_seconds", [*pod, role], cpu)
        if pss is not None:
            f.add("runvm_process_pss_bytes", [*pod, role], float(pss))
    if p.guest_memory_total is not None:
        f.add("runvm_guest_memory_total_bytes", pod, float(p.guest_memory_total))
    if p.guest_memory_available is not None:
        f.add("runvm_guest_memory_available_bytes", pod, float(p.guest_memory_available))
    for c in p.containers:
        s, labels = c.stats, [*pod, c.id, c.name]
        if s is None:
            continue
        for name, value in (
            ("runvm_container_cpu_usage_seconds", s.cpu_usage_usec / 1e6),
            ("runvm_container_cpu_user_seconds", s.cpu_user_usec / 1e6),
            ("runvm_container_cpu_system_seconds", s.cpu_system_usec / 1e6),
            ("runvm_container_memory_usage_bytes", s.memory_current),
            ("runvm_container_pids", s.pids_current),
            ("runvm_container_oom_kills", s.oom_kills),
            ("runvm_container_io_read_bytes", s.io_read_bytes),
            ("runvm_container_io_write_bytes", s.io_write_bytes),
            ("runvm_container_io_reads", s.io_read_ops),
            ("runvm_container_io_writes", s.io_write_ops),
        ):
            f.add(name, labels, float(value))
        if s.memory_max:
            f.add("runvm_container_memory_limit_bytes", labels, float(s.memory_max))
        if s.pids_max:
            f.add("runvm_container_pids_limit", labels, float(s.pids_max))
    for m in p.agent_methods:
        h = m.latency
        buckets = [(f"{b:g}", float(n)) for b, n in zip(h.bounds, h.counts, strict=False)]
        buckets.append(("+Inf", float(h.counts[-1])))
        f.histogram("runvm_agent_request_duration_seconds", [*pod, m.method], buckets, h.sum)
        for kind_, n in (("timeout", m.timeouts), ("lost", m.lost), ("rpc", m.rpc_errors)):
            if n:
                f.add("runvm_agent_request_errors", [*pod, m.method, kind_], float(n))


class _Families:
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterator[Metric]:
        col = self.collector
        f = _Out()
        counts: dict[tuple[str, str], int] = {}
        for view in col.views.values():
            _add_view(f, view)
            key = (view.figures.state, view.figures.origin or "unknown")
            counts[key] = counts.get(key, 0) + 1
        for (state, origin), n in sorted(counts.items()):
            f.add("runvm_sandboxes", [state, origin], float(n))
        f.add("runvm_metrics_collect_duration_seconds", [], col.round_seconds)
        if col.last_round:
            f.add("runvm_metrics_last_collect_timestamp_seconds", [], col.last_round)
        yield from f.families.values()
        for family in (*col.errors.collect(), *col.boots.collect()):
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family  # (a ``_created`` series says when this process first counted)


def render(collector: Collector) -> bytes:
    """The exposition text of everything the collector holds now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(collector))
    return generate_latest(registry)
