"""Checks of the parts of a spec whose values the kernel, not JSON, constrains: the
``linux.resources`` numbers and the capability names.

Contract: :func:`check_resources` and :func:`check_capabilities` return nothing and raise
:class:`ConfigError` naming the JSON path and the bad value.
"""

from __future__ import annotations

from typing import Any

from runvm.errors import ConfigError

CAPABILITIES = frozenset((
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
))  # fmt: skip
"""Every capability of Linux 6.1 (``include/uapi/linux/capability.h``)."""

CAP_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

_U64 = (0, 2**64 - 1)
_I64 = (-1, 2**63 - 1)  # -1: unlimited
# section -> field -> allowed range (runtime-spec config-linux.md, "Control groups")
NUMBERS: dict[str, dict[str, tuple[int, int]]] = {
    "memory": {"limit": _I64, "reservation": _I64, "swap": _I64, "kernel": _I64,
               "kernelTCP": _I64, "swappiness": (0, 100)},
    "cpu": {"shares": _U64, "quota": _I64, "period": _U64, "realtimeRuntime": _I64,
            "realtimePeriod": _U64, "burst": _U64, "idle": (0, 1)},
    "pids": {"limit": _I64},
    "blockIO": {"weight": (0, 1000), "leafWeight": (0, 1000)},  # 0: not set (Docker sends it)
}  # fmt: skip
STRINGS = {"cpu": ("cpus", "mems")}


def _number(value: Any, where: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not an integer")
    if not low <= value <= high:
        raise ConfigError(f"{where}: {value} is outside {low}..{high}")


def check_resources(resources: Any, where: str) -> None:
    """Check the numbers of a LinuxResources object (unknown sections and fields pass)."""
    if not isinstance(resources, dict):
        raise ConfigError(f"{where}: must be an object")
    for section, fields in NUMBERS.items():
        part = resources.get(section)
        if part is None:
            continue
        if not isinstance(part, dict):
            raise ConfigError(f"{where}.{section}: must be an object")
        for key, (low, high) in fields.items():
            if part.get(key) is not None:
                _number(part[key], f"{where}.{section}.{key}", low, high)
        for key in STRINGS.get(section, ()):
            if part.get(key) is not None and not isinstance(part[key], str):
                raise ConfigError(f"{where}.{section}.{key}: {part[key]!r} is not a string")


def check_capabilities(caps: Any, where: str) -> None:
    """Every capability set is a list of known ``CAP_`` names."""
    if not isinstance(caps, dict):
        raise ConfigError(f"{where}: must be an object")
    for name in CAP_SETS:
        values = caps.get(name)
        if values is None:
            continue
        if not isinstance(values, list):
            raise ConfigError(f"{where}.{name}: must be an array")
        for value in values:
            if value not in CAPABILITIES:
                raise ConfigError(f"{where}.{name}: unknown capability {value!r}")
