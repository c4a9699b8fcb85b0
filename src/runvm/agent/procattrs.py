"""The runtime-spec 1.1+ process fields the guest's crun (1.8) predates, applied by the agent.

Contract: :func:`apply_init_attrs` gives a container's init, created but not yet started (it
waits in crun before executing the user program), the spec's ``process.scheduler``,
``process.ioPriority`` and ``process.execCPUAffinity``; all three survive execve, so the user
program starts with them. :func:`apply_cpu_burst` writes ``linux.resources.cpu.burst`` to the
container's cgroup. Each raises OSError naming the call (the shapes were checked by
:mod:`runvm.oci.fields`).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runvm.agent.syscalls import libc
from runvm.oci.fields import IOPRIO_CLASSES, SCHED_FLAGS, SCHED_POLICIES, cpu_set

SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}
SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_SHIFT = 13


def _syscall(table: Mapping[str, int], what: str, *args: Any) -> None:
    number = table[platform.machine()]
    if libc.syscall(number, *args) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _sched_attr(sched: Mapping[str, Any]) -> bytes:
    """struct sched_attr (include/uapi/linux/sched/types.h), its 48-byte first version."""
    flags = 0
    for name in sched.get("flags") or []:
        flags |= SCHED_FLAGS[name]
    return struct.pack(
        "IIQiIQQQ", 48, SCHED_POLICIES[sched["policy"]], flags, sched.get("nice", 0),
        sched.get("priority", 0), sched.get("runtime", 0), sched.get("deadline", 0),
        sched.get("period", 0),
    )  # fmt: skip


def apply_init_attrs(pid: int, process: Mapping[str, Any]) -> None:
    """See the module docstring."""
    sched = process.get("scheduler")
    if sched is not None:
        attr = _sched_attr(sched)
        _syscall(SYS_SCHED_SETATTR, "sched_setattr", pid, ctypes.c_char_p(attr), 0)
    prio = process.get("ioPriority")
    if prio is not None:
        value = IOPRIO_CLASSES[prio["class"]] << IOPRIO_CLASS_SHIFT | prio.get("priority", 0)
        _syscall(SYS_IOPRIO_SET, "ioprio_set", IOPRIO_WHO_PROCESS, pid, value)
    affinity = process.get("execCPUAffinity")
    if affinity is not None:
        text = affinity.get("final") or affinity["initial"]
        os.sched_setaffinity(pid, cpu_set(text, "process.execCPUAffinity"))


def apply_cpu_burst(cgroup: Path, resources: Mapping[str, Any]) -> None:
    """Write ``cpu.burst`` (microseconds) to ``cgroup``'s ``cpu.max.burst`` if it is set."""
    burst = (resources.get("cpu") or {}).get("burst")
    if burst is not None:
        (cgroup / "cpu.max.burst").write_text(str(int(burst)))
