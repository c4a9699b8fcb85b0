"""Agent request timings, kept by the process that makes the requests (the VM's owner).

Contract: :meth:`CallRecorder.observe` is cheap and never raises; at most
:data:`MAX_METHODS` methods are told apart (later ones count as ``other``). Counts only
grow for the recorder's life; :meth:`figures` is a consistent copy.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from runvm.metrics.figures import LATENCY_BOUNDS, Histogram, MethodFigures

MAX_METHODS = 64
OUTCOMES = ("", "timeout", "lost", "rpc")  # "": answered


@dataclass
class _Method:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    sum: float = 0.0
    failed: dict[str, int] = field(default_factory=dict)


class CallRecorder:
    def __init__(self) -> None:
        self._methods: dict[str, _Method] = {}

    def observe(self, method: str, seconds: float, outcome: str = "") -> None:
        """One request of ``method`` took ``seconds``; ``outcome`` one of :data:`OUTCOMES`."""
        if method not in self._methods and len(self._methods) >= MAX_METHODS:
            method = "other"
        entry = self._methods.setdefault(method, _Method())
        seconds = max(0.0, seconds)
        entry.buckets[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        entry.sum += seconds
        if outcome:
            entry.failed[outcome] = entry.failed.get(outcome, 0) + 1

    def figures(self) -> tuple[MethodFigures, ...]:
        out = []
        for method, entry in sorted(self._methods.items()):
            running, cumulative = 0, []
            for count in entry.buckets:
                running += count
                cumulative.append(running)
            latency = Histogram(LATENCY_BOUNDS, tuple(cumulative), entry.sum)
            failed = entry.failed
            out.append(MethodFigures(method, latency, failed.get("timeout", 0),
                                     failed.get("lost", 0), failed.get("rpc", 0)))  # fmt: skip
        return tuple(out)
