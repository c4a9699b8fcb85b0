"""What a VM's owner reports about its pod to the metrics daemon (:mod:`runvm.metrics`).

Contract of :func:`pod_figures`: returns within about ``budget`` seconds. It asks the agent
only what the owner may ask anyway (GuestDetails, StatsContainer of each live container),
all at once; an answer that is not back in time is given up on and left out (the figures
say so: ``guest_memory_total`` or a container's ``stats`` is None). The rest (state,
origin, host pids, boot step timings, agent request timings) is what the owner already
holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Mapping
from typing import Any

from runvm.errors import RunvmError
from runvm.metrics.figures import ContainerFigures, PodFigures
from runvm.runtime.container import Container
from runvm.runtime.lifecycle import SandboxState, State
from runvm.runtime.pod import Pod

POD_NAME = ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name")
POD_NAMESPACE = ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace")
CONTAINER_NAME = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")
MAX_LABEL = 128
ASKED = (State.CREATED, State.RUNNING, State.PAUSED)  # a cgroup to read in the guest


def _annotation(annotations: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = annotations.get(key)
        if isinstance(value, str) and value:
            return "".join(c for c in value if c.isprintable())[:MAX_LABEL]
    return ""


def _annotations(container: Container) -> Mapping[str, Any]:
    found = container.spec.get("annotations")
    return found if isinstance(found, dict) else {}


async def _within(budget: float, asks: Mapping[str, Awaitable[Any]]) -> dict[str, Any]:
    """The results of ``asks`` that came back within ``budget`` seconds without failing."""
    tasks = {key: asyncio.ensure_future(aw) for key, aw in asks.items()}
    if tasks:
        await asyncio.wait(tasks.values(), timeout=budget)
    results = {}
    for key, task in tasks.items():
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            results[key] = task.result()
        elif not task.cancelled() and not isinstance(task.exception(), (RunvmError, OSError)):
            task.result()  # a bug: let it surface
    for task in tasks.values():
        with contextlib.suppress(BaseException):
            await task
    return results


async def pod_figures(pod: Pod, role: str, budget: float) -> PodFigures:
    """See the module docstring; ``role``: this process's (``shim`` or ``monitor``)."""
    containers = list(pod.containers.values())
    everyone = [_annotations(c) for c in containers]
    pod_name = next((n for a in everyone if (n := _annotation(a, POD_NAME))), "")
    namespace = next((n for a in everyone if (n := _annotation(a, POD_NAMESPACE))), "")
    sandbox = pod.sandbox
    processes = [(role, os.getpid())]
    if sandbox is None:
        return PodFigures(pod.id, pod_name, namespace, processes=tuple(processes),
                          containers=tuple(ContainerFigures(c.id, "", c.state.value, None)
                                           for c in containers))  # fmt: skip
    if sandbox.vm is not None and sandbox.vm.pid:
        processes.append(("qemu", sandbox.vm.pid))
    if sandbox.virtiofsd is not None:
        processes.append(("virtiofsd", sandbox.virtiofsd.pid))
    asks: dict[str, Awaitable[Any]] = {}
    ready = sandbox.state is SandboxState.READY and sandbox.agent is not None
    if ready:
        assert sandbox.agent is not None
        asks[""] = sandbox.agent.guest_details()
        asks.update({c.id: c.stats() for c in containers if c.state in ASKED})
    answers = await _within(budget, asks)
    details = answers.get("")
    figures = []
    for c in containers:
        stats = answers.get(c.id)
        name = _annotation(_annotations(c), CONTAINER_NAME)
        figures.append(ContainerFigures(c.id, name, c.state.value, stats))
    return PodFigures(
        sandbox_id=sandbox.id, pod_name=pod_name, pod_namespace=namespace,
        state=sandbox.state.value, origin=sandbox.origin, run_dir=str(sandbox.run_dir),
        agent_instance=sandbox.details.instance_id if sandbox.details is not None else "",
        failure=sandbox.failure, processes=tuple(processes),
        boot_steps=tuple(sandbox.timings.items()),
        guest_memory_total=details.mem_total_bytes if details is not None else None,
        guest_memory_available=details.mem_available_bytes if details is not None else None,
        containers=tuple(figures), agent_methods=sandbox.calls.figures(),
    )  # fmt: skip
