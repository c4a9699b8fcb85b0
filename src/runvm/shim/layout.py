"""Where a shim keeps its things, derived from the config, the command line and the group.

- ``<state_root>/s/<sha256>``: the ttrpc socket (the address containerd dials; the hash is
  Go's ``SocketAddress`` of containerd's address, the namespace and the group id, or
  :data:`SHARED` when one shim serves the namespace: ``shim.scope``), with ``.lock``
  (serializes concurrent ``start``) and ``.pid`` (the serving shim's, locked for its life)
  next to it;
- ``<state_root>/k/<ns>``: the state root of the namespace's pods: ``sandboxes/<group>``
  (the VM's run directory), ``<group>.json`` (the record ``delete`` cleans up from) and
  ``<group>.log`` (the shim's log).
Long names are shortened to a hash so socket paths stay short.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from runvm import config as cfg
from runvm.names import run_dir_name
from runvm.shim.cmdline import socket_address

SHARED = "*"
"""The socket's group when one shim serves every pod of a namespace (no container id is '*')."""


@dataclass(frozen=True)
class Layout:
    state_root: Path
    namespace: str
    group: str  # the pod: the first container's id, or the pod sandbox's
    address: str  # unix://<socket> of the shim serving the pod

    @classmethod
    def of(cls, config: cfg.RunvmConfig, containerd_address: str, namespace: str,
           group: str, config_path: str | None = None) -> Layout:  # fmt: skip
        """``config_path``: the runtime options' config file; pods of other configs get
        other shared shims."""
        root = Path(config.runtime.state_root)
        key = f"{SHARED}{config_path or ''}" if config.shim.scope == "namespace" else group
        address = socket_address(containerd_address, namespace, key, str(root / "s"))
        return cls(root, namespace, group, address)

    def of_pod(self, group: str) -> Layout:
        """The layout of another pod served by the same shim."""
        return dataclasses.replace(self, group=group)

    @property
    def socket(self) -> Path:
        return Path(self.address.removeprefix("unix://"))

    @property
    def lock(self) -> Path:
        return self.socket.with_name(self.socket.name + ".lock")

    @property
    def owner(self) -> Path:
        """The serving shim's pid file, locked for its life (:mod:`runvm.shim.owner`)."""
        return self.socket.with_name(self.socket.name + ".pid")

    @property
    def pod_root(self) -> Path:
        return self.state_root / "k" / run_dir_name(self.namespace)

    @property
    def _name(self) -> str:  # ids start with a letter or digit: ".shim" is nobody's
        return ".shim" if self.group == SHARED else run_dir_name(self.group)

    @property
    def record(self) -> Path:
        return self.pod_root / f"{self._name}.json"

    @property
    def log(self) -> Path:
        return self.pod_root / f"{self._name}.log"

    @property
    def logs(self) -> tuple[Path, Path]:
        """The log and its one rotated predecessor."""
        return self.log, self.log.with_name(self.log.name + ".1")

    @property
    def run_dir(self) -> Path:
        return self.pod_root / "sandboxes" / run_dir_name(self.group)

    def pod_config(self, config: cfg.RunvmConfig) -> cfg.RunvmConfig:
        """The config whose state root puts this pod's VM under :attr:`pod_root`."""
        runtime = dataclasses.replace(config.runtime, state_root=str(self.pod_root))
        return dataclasses.replace(config, runtime=runtime)
