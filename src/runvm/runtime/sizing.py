"""How big a pod's VM is: the configured base plus what its containers ask for.

Rule (docs/design.md, "Sizing"): the VM has ``[hypervisor] vcpus`` and ``memory_mib``, plus,
for each container with limits in its ``linux.resources``, ceil(quota / period) vCPUs (or as
many as its cpuset names, if more) and its memory limit. A container without limits adds
nothing. The result may not pass ``max_vcpus`` / ``max_memory_mib`` (0: the host's CPUs and
RAM): past a cap :func:`vm_size` raises ConfigError with the numbers and the fix. Values are
read with limits: a document that is not what the runtime-spec says is a ConfigError.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runvm.config import RunvmConfig
from runvm.errors import ConfigError

MAX_CPUSET_CPUS = 4096
_CPUSET = re.compile(r"\d{1,4}(-\d{1,4})?(,\d{1,4}(-\d{1,4})?)*")


@dataclass(frozen=True)
class Size:
    vcpus: int
    memory_mib: int

    def __str__(self) -> str:
        return f"{self.vcpus} vCPUs and {self.memory_mib} MiB"

    def __add__(self, other: Size) -> Size:
        return Size(self.vcpus + other.vcpus, self.memory_mib + other.memory_mib)


NOTHING = Size(0, 0)


def cpuset_count(cpus: str) -> int:
    """How many CPUs a cpuset list names (``"0-3,8"`` is 5)."""
    text = cpus.strip()
    if not text:
        return 0
    if not _CPUSET.fullmatch(text):
        raise ConfigError(f"linux.resources.cpu.cpus {cpus!r} is not a CPU list like 0-3,8")
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if last < first:
            raise ConfigError(f"linux.resources.cpu.cpus {cpus!r}: range {part} is backwards")
        count += last - first + 1
    if count > MAX_CPUSET_CPUS:
        raise ConfigError(f"linux.resources.cpu.cpus {cpus!r} names over {MAX_CPUSET_CPUS} CPUs")
    return count


def _int(table: Mapping[str, Any], key: str, where: str) -> int:
    value = table.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key} must be an integer, not {value!r}")
    return value


def needs(resources: Mapping[str, Any] | None) -> Size:
    """What one container's ``linux.resources`` adds to its VM."""
    if not resources:
        return Size(0, 0)
    cpu = resources.get("cpu") or {}
    memory = resources.get("memory") or {}
    if not isinstance(cpu, Mapping) or not isinstance(memory, Mapping):
        raise ConfigError("linux.resources.cpu and .memory must be objects")
    quota = _int(cpu, "quota", "linux.resources.cpu")
    period = _int(cpu, "period", "linux.resources.cpu") or 100_000
    vcpus = math.ceil(quota / period) if quota > 0 and period > 0 else 0
    cpus = cpu.get("cpus")
    if cpus is not None:
        if not isinstance(cpus, str):
            raise ConfigError(f"linux.resources.cpu.cpus must be a string, not {cpus!r}")
        vcpus = max(vcpus, cpuset_count(cpus))
    limit = _int(memory, "limit", "linux.resources.memory")
    mib = math.ceil(limit / (1 << 20)) if limit > 0 else 0
    return Size(vcpus, mib)


def host_memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def caps(config: RunvmConfig) -> Size:
    hv = config.hypervisor
    return Size(hv.max_vcpus or os.cpu_count() or 1, hv.max_memory_mib or host_memory_mib())


def base(config: RunvmConfig) -> Size:
    return Size(config.hypervisor.vcpus, config.hypervisor.memory_mib)


def vm_size(config: RunvmConfig, resources: Mapping[str, Any] | None, what: str) -> Size:
    """The VM for the base plus ``what`` (e.g. "container c") and its resources."""
    wanted = needs(resources)
    return check(config, base(config) + wanted, wanted, what)


def check(config: RunvmConfig, size: Size, wanted: Size, what: str) -> Size:
    """``size`` (a VM holding ``wanted`` for ``what``), or ConfigError past a cap."""
    cap = caps(config)
    if size.vcpus > cap.vcpus:
        raise ConfigError(f"{what} asks for {wanted.vcpus} vCPUs (its CPU quota or cpuset); "
                          f"its VM would have {size.vcpus}, over the cap of {cap.vcpus} "
                          "(hypervisor.max_vcpus, 0: the host's CPUs): lower the limit or "
                          "raise the cap")  # fmt: skip
    if size.memory_mib > cap.memory_mib:
        raise ConfigError(f"{what} asks for {wanted.memory_mib} MiB (its memory limit); its "
                          f"VM would have {size.memory_mib} MiB, over the cap of "
                          f"{cap.memory_mib} MiB (hypervisor.max_memory_mib, 0: the host's "
                          "RAM): lower the limit or raise the cap")  # fmt: skip
    return size


def merged(old: Mapping[str, Any] | None, update: Mapping[str, Any]) -> dict[str, Any]:
    """``old`` LinuxResources with ``update``'s sections laid over it key by key (what an
    update that names only some limits leaves in force)."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v
                           for k, v in (old or {}).items()}  # fmt: skip
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out
