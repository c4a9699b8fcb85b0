"""Pod rules for the shim (pure): which namespaces a VM pod can honour.

A pod is one VM: its network namespace is the VM's, so host network is impossible, and a
container without its own PID or IPC namespace would share the host's (host PID / host IPC)
in runc, which a VM cannot give. containerd's CRI names the sandbox's namespaces as
``/proc/<sandbox task pid>/ns/<type>``; the shim reports the VM's (QEMU's) PID as every task's
PID, so those paths map to ``/proc/<sandbox init's guest pid>/ns/<type>`` in the guest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runvm.errors import ConfigError

_REQUIRED = {"network": "host network", "pid": "host PID", "ipc": "host IPC"}


def check_namespaces(spec: Mapping[str, Any], container_id: str, kind: str | None) -> None:
    """Refuse a pod container (``kind`` set) that asks for a host namespace."""
    if kind is None:
        return
    present = {ns.get("type") for ns in (spec.get("linux") or {}).get("namespaces") or []}
    for ns_type, what in _REQUIRED.items():
        if ns_type not in present:
            raise ConfigError(
                f"pod {kind} {container_id}: {what} is not possible in a VM pod "
                f"(its config.json has no {ns_type} namespace)"
            )
