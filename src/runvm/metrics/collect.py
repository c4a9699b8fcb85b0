"""The daemon's collection: one round asks every owner at once, each within ``timeout``.

Contract of :meth:`Collector.round`: it takes about ``timeout`` seconds at most, whatever
the owners do (a hung one, one that speaks garbage, one that is gone). After it,
:attr:`Collector.views` holds one :class:`View` per sandbox found on disk: the figures of its
owner's latest answer; if this round's answer did not come, or left parts out (the agent was
slow), the older figures are kept and the view is ``stale``. Sandboxes no longer on disk are
dropped. Host figures (CPU, PSS) are read from /proc every round, for the pids the owner
named (or the disk did). Nothing here raises for what it finds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import Counter, Histogram

from runvm.errors import ProtocolError, RpcError
from runvm.metrics import DEFAULT_TIMEOUT, SERVICE, procstat, wire
from runvm.metrics.discover import Owner, owners
from runvm.metrics.figures import PodFigures
from runvm.ttrpc import Client

log = logging.getLogger(__name__)

BOOT_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONCURRENCY = 256  # owners asked at the same time (the rest wait, within the timeout)
ERROR_KINDS = ("owner_timeout", "owner_unreachable", "owner_bad_answer", "state_unreadable",
               "sandbox_failed")  # fmt: skip

Ask = Callable[[Owner, float], Awaitable[list[PodFigures]]]


async def ask_owner(owner: Owner, timeout: float) -> list[PodFigures]:
    """The owner's ``Snapshot``; TimeoutError, OSError, ProtocolError or RpcError otherwise."""
    async with asyncio.timeout(timeout):
        conn = await Client.connect_unix(str(owner.socket), max_message=wire.MAX_PAYLOAD + 4096)
        try:
            return wire.decode(await conn.call(SERVICE, "Snapshot", b"", timeout=timeout))
        finally:
            await conn.close()


@dataclass
class View:
    """What is served about one sandbox."""

    owner: Owner
    figures: PodFigures
    updated: float = 0.0  # wall-clock time of the answer the figures come from (0: none yet)
    up: bool = False  # its owner answered this round
    stale: bool = True  # some figures are older than this round
    host: dict[str, tuple[float | None, int | None]] = field(default_factory=dict)
    # role -> (CPU seconds, PSS bytes), read this round


def _carry(new: PodFigures, old: PodFigures | None) -> tuple[PodFigures, bool]:
    """``new`` with what it left out taken from ``old``; and whether anything was."""
    if old is None:
        missing = new.guest_memory_total is None or any(c.stats is None for c in new.containers)
        return new, missing
    carried = False
    memory = new.guest_memory_total
    if memory is None and old.guest_memory_total is not None:
        memory, carried = old.guest_memory_total, True
    before = {c.id: c for c in old.containers}
    containers = []
    for c in new.containers:
        prev = before.get(c.id)
        if c.stats is None and prev is not None and prev.stats is not None:
            c, carried = dataclasses.replace(c, stats=prev.stats), True
        containers.append(c)
    missing = memory is None or any(c.stats is None for c in containers)
    figures = dataclasses.replace(new, guest_memory_total=memory, containers=tuple(containers))
    return figures, carried or missing


class Collector:
    def __init__(
        self,
        state_root: Path,
        timeout: float = DEFAULT_TIMEOUT,
        ask: Ask = ask_owner,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.state_root = state_root
        self.timeout = timeout
        self.ask = ask
        self.now = now
        self.views: dict[tuple[Path, str], View] = {}
        self.errors = Counter("runvm_errors", "Errors of the metrics daemon and of the "
                              "sandboxes it watches, by kind", ["kind"], registry=None)  # fmt: skip
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self.boots = Histogram("runvm_boot_step_duration_seconds",
                               "Boot step durations of the sandboxes seen, by origin",
                               ["origin", "step"], buckets=BOOT_BOUNDS, registry=None)  # fmt: skip
        self.last_round = 0.0  # wall-clock end of the last round (0: none yet)
        self.round_seconds = 0.0
        self._booted: set[tuple[Path, str, str]] = set()
        self._failed: set[tuple[Path, str]] = set()
        self._starts: dict[tuple[Path, str, str], tuple[int, int]] = {}  # -> (pid, start)

    async def round(self) -> None:
        """See the module docstring."""
        began = time.monotonic()
        found = await asyncio.to_thread(owners, self.state_root)
        if found.bad:
            self.errors.labels("state_unreadable").inc(found.bad)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(owner: Owner) -> list[PodFigures] | None:
            try:
                async with asyncio.timeout(self.timeout), gate:  # whatever ``ask`` does
                    return await self.ask(owner, self.timeout)
            except TimeoutError:
                self.errors.labels("owner_timeout").inc()
            except (OSError, EOFError):
                self.errors.labels("owner_unreachable").inc()
            except (ProtocolError, RpcError):
                self.errors.labels("owner_bad_answer").inc()
            except Exception:  # whatever happens with one owner, the others are served
                log.exception("metrics: asking %s", owner.socket)
                self.errors.labels("owner_bad_answer").inc()
            return None

        answers = await asyncio.gather(*(one(o) for o in found.owners))
        stamp = self.now()
        views: dict[tuple[Path, str], View] = {}
        for owner, answer in zip(found.owners, answers, strict=True):
            views.update(self._merge(owner, answer, stamp))
        await asyncio.to_thread(self._read_host, views)
        self.views = views
        self._forget(views)
        self.last_round = self.now()
        self.round_seconds = time.monotonic() - began

    def _merge(
        self, owner: Owner, answer: list[PodFigures] | None, stamp: float
    ) -> dict[tuple[Path, str], View]:
        mine = {k: v for k, v in self.views.items() if k[0] == owner.socket}
        if answer is None:  # the last answer stands, stale; or names from disk
            kept = {k: dataclasses.replace(v, owner=owner, up=False, stale=True)
                    for k, v in mine.items()}  # fmt: skip
            if kept:
                return kept
            return {(owner.socket, name): View(owner, PodFigures(name, state="unknown"))
                    for name in owner.names}  # fmt: skip
        out = {}
        for pod in answer:
            key = (owner.socket, pod.sandbox_id)
            old = mine.get(key)
            figures, stale = _carry(pod, old.figures if old is not None else None)
            out[key] = View(owner, figures, stamp, up=True, stale=stale)
            self._note(key, figures)
        return out

    def _note(self, key: tuple[Path, str], pod: PodFigures) -> None:
        """Boot steps once per VM instance; a failure once per sandbox."""
        instance = pod.agent_instance or pod.run_dir
        if pod.boot_steps and pod.state != "booting" and (*key, instance) not in self._booted:
            self._booted.add((*key, instance))
            for step, seconds in pod.boot_steps:
                self.boots.labels(pod.origin or "unknown", step).observe(seconds)
        if pod.state == "failed" and key not in self._failed:
            self._failed.add(key)
            self.errors.labels("sandbox_failed").inc()

    def _forget(self, views: dict[tuple[Path, str], View]) -> None:
        self._booted = {b for b in self._booted if b[:2] in views}
        self._failed &= set(views)
        self._starts = {s: v for s, v in self._starts.items() if s[:2] in views}

    def _read_host(self, views: dict[tuple[Path, str], View]) -> None:
        """CPU and PSS of each view's processes; a pid whose start time changed since it was
        first seen is another process now, and is not read."""
        for key, view in views.items():
            pids = view.figures.processes if view.updated else view.owner.pids
            for role, pid in pids:
                start = procstat.start_time(pid)
                known = self._starts.get((*key, role))
                if start is None or (known is not None and known[0] == pid != 0 and
                                     known[1] != start):  # fmt: skip
                    continue
                self._starts[(*key, role)] = (pid, start)
                view.host[role] = (procstat.cpu_seconds(pid), procstat.pss_bytes(pid))
