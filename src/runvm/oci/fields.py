"""What runvm does with each config.json field that runtime-spec 1.1, 1.2 and 1.3 added.

Every field newer than 1.0.2 is either honoured (by crun in the guest, or by the agent where
the guest's crun 1.8 predates it) or refused with an error naming it: crun silently drops
fields it does not know, and nothing that weakens isolation may be dropped unseen.

Contract: :func:`check_fields` raises ConfigError for the first refused field a spec uses;
:func:`check_exec_fields` does the same for an exec's process (the agent applies the
per-process fields to a container's init, before it executes the user program, and cannot
do so for an exec, which crun starts at once). ``HONOURED`` and ``REFUSED`` feed
``runvm features``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runvm.errors import ConfigError

HONOURED: dict[str, str] = {
    "domainname": "crun",
    "linux.resources.unified": "crun",
    "linux.resources.cpu.idle": "crun",
    "linux.resources.cpu.burst": "agent (cpu.max.burst)",
    "linux.resources.memory.checkBeforeUpdate": "crun",
    "linux.seccomp.defaultErrnoRet, syscalls[].errnoRet, flags, new actions": "crun",
    "process.scheduler": "agent (sched_setattr on the init before it executes)",
    "process.ioPriority": "agent (ioprio_set on the init before it executes)",
    "process.execCPUAffinity": "agent (the final, else initial, CPU set of the init)",
    "mounts[].options: rro, rrw, rnosuid, rnodev, rnoexec and the other r* options": "crun",
}
"""Field -> who applies it."""

REFUSED: dict[str, str] = {
    "mounts[].uidMappings": "idmapped mounts of virtio-fs need a newer guest kernel",
    "mounts[].gidMappings": "idmapped mounts of virtio-fs need a newer guest kernel",
    "mounts[].options: idmap, ridmap": "idmapped mounts of virtio-fs need a newer guest kernel",
    "mounts[].options: symfollow, nosymfollow, rsymfollow, rnosymfollow": (
        "the guest's crun does not know them"
    ),
    "linux.namespaces: time": "the guest kernel has no time namespaces",
    "linux.timeOffsets": "the guest kernel has no time namespaces",
    "linux.netDevices": "host network devices cannot be moved into a VM (the pod's "
    "network namespace reaches the VM as NICs instead)",
    "linux.memoryPolicy": "only MPOL_DEFAULT: the VM has one NUMA node",
    "linux.intelRdt": "RDT is a host CPU feature a VM's container cannot be given",
    "linux.seccomp.listenerPath": "a seccomp notify agent on the host cannot reach the "
    "guest kernel",
}
"""Field -> why it is refused."""

PER_PROCESS = ("scheduler", "ioPriority", "execCPUAffinity")
REFUSED_OPTIONS = {
    "idmap": "mounts[].options: idmap, ridmap",
    "ridmap": "mounts[].options: idmap, ridmap",
    "symfollow": "mounts[].options: symfollow, nosymfollow, rsymfollow, rnosymfollow",
    "nosymfollow": "mounts[].options: symfollow, nosymfollow, rsymfollow, rnosymfollow",
    "rsymfollow": "mounts[].options: symfollow, nosymfollow, rsymfollow, rnosymfollow",
    "rnosymfollow": "mounts[].options: symfollow, nosymfollow, rsymfollow, rnosymfollow",
}


def _refuse(where: str, key: str) -> ConfigError:
    return ConfigError(f"{where}: not supported by runvm: {REFUSED[key]}")


def check_fields(spec: Mapping[str, Any], name: str = "config.json") -> None:
    """Refuse the fields of ``spec`` that runvm cannot honour; see the module docstring."""
    for i, mount in enumerate(spec.get("mounts") or []):
        where = f"{name}.mounts[{i}]"
        for key in ("uidMappings", "gidMappings"):
            if mount.get(key):
                raise _refuse(f"{where}.{key}", f"mounts[].{key}")
        for option in mount.get("options") or []:
            if option in REFUSED_OPTIONS:
                raise _refuse(f"{where}.options: {option}", REFUSED_OPTIONS[option])
    linux = spec.get("linux") or {}
    for i, ns in enumerate(linux.get("namespaces") or []):
        if ns.get("type") == "time":
            raise _refuse(f"{name}.linux.namespaces[{i}]: time", "linux.namespaces: time")
    for key in ("timeOffsets", "netDevices", "intelRdt"):
        if linux.get(key):
            raise _refuse(f"{name}.linux.{key}", f"linux.{key}")
    policy = linux.get("memoryPolicy")
    if policy and (not isinstance(policy, dict) or policy.get("mode") != "MPOL_DEFAULT"):
        raise _refuse(f"{name}.linux.memoryPolicy", "linux.memoryPolicy")
    if (linux.get("seccomp") or {}).get("listenerPath"):
        raise _refuse(f"{name}.linux.seccomp.listenerPath", "linux.seccomp.listenerPath")


def check_exec_fields(process: Mapping[str, Any], name: str) -> None:
    """Refuse the per-process fields on an exec (see the module docstring)."""
    for key in PER_PROCESS:
        if process.get(key) is not None:
            raise ConfigError(f"{name}.{key}: runvm applies {key} to a container's init only, "
                              "not to an exec")  # fmt: skip


SCHED_POLICIES = {
    "SCHED_OTHER": 0, "SCHED_FIFO": 1, "SCHED_RR": 2, "SCHED_BATCH": 3, "SCHED_ISO": 4,
    "SCHED_IDLE": 5, "SCHED_DEADLINE": 6,
}  # fmt: skip
SCHED_FLAGS = {
    "SCHED_FLAG_RESET_ON_FORK": 0x01, "SCHED_FLAG_RECLAIM": 0x02,
    "SCHED_FLAG_DL_OVERRUN": 0x04, "SCHED_FLAG_KEEP_POLICY": 0x08,
    "SCHED_FLAG_KEEP_PARAMS": 0x10, "SCHED_FLAG_UTIL_CLAMP_MIN": 0x20,
    "SCHED_FLAG_UTIL_CLAMP_MAX": 0x40,
}  # fmt: skip
IOPRIO_CLASSES = {"IOPRIO_CLASS_RT": 1, "IOPRIO_CLASS_BE": 2, "IOPRIO_CLASS_IDLE": 3}
MAX_CPU = 8191


def _int(obj: Mapping[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = obj.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{where}.{key}: must be an integer from {low} to {high}")
    return value


def cpu_set(text: Any, where: str) -> set[int]:
    """A CPU list such as ``0-3,7`` as a set (ConfigError naming ``where`` if malformed)."""
    cpus: set[int] = set()
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: must be a CPU list such as 0-3,7")
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ConfigError(f"{where}: {text!r} is not a CPU list such as 0-3,7")
        first, last = int(low), int(high) if dash else int(low)
        if first > last or last > MAX_CPU:
            raise ConfigError(f"{where}: {text!r}: range {part!r} is out of order or too large")
        cpus.update(range(first, last + 1))
    return cpus


def check_process_fields(proc: Mapping[str, Any], where: str) -> None:
    """The shapes of ``scheduler``, ``ioPriority`` and ``execCPUAffinity``."""
    sched = proc.get("scheduler")
    if sched is not None:
        w = f"{where}.scheduler"
        if not isinstance(sched, dict) or sched.get("policy") not in SCHED_POLICIES:
            raise ConfigError(f"{w}.policy: must be one of {', '.join(SCHED_POLICIES)}")
        _int(sched, "nice", w, -20, 19)
        _int(sched, "priority", w, 0, 99)
        for key in ("runtime", "deadline", "period"):
            _int(sched, key, w, 0, 2**63 - 1)
        flags = sched.get("flags") or []
        if not isinstance(flags, list) or any(f not in SCHED_FLAGS for f in flags):
            raise ConfigError(f"{w}.flags: each must be one of {', '.join(SCHED_FLAGS)}")
    prio = proc.get("ioPriority")
    if prio is not None:
        w = f"{where}.ioPriority"
        if not isinstance(prio, dict) or prio.get("class") not in IOPRIO_CLASSES:
            raise ConfigError(f"{w}.class: must be one of {', '.join(IOPRIO_CLASSES)}")
        _int(prio, "priority", w, 0, 7)
    affinity = proc.get("execCPUAffinity")
    if affinity is not None:
        w = f"{where}.execCPUAffinity"
        if not isinstance(affinity, dict) or not ({"initial", "final"} & affinity.keys()):
            raise ConfigError(f"{w}: must be an object with initial and/or final")
        for key in ("initial", "final"):
            if key in affinity:
                cpu_set(affinity[key], f"{w}.{key}")
